"""The QueueStore contract, against SQLiteQueue on a real file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mxpress.errors import ConfigError, QueueError
from mxpress.queue import (
    AttemptOutcome,
    MessageState,
    NewMessage,
    QueueFilter,
    RecipientState,
    RetryPolicy,
    SQLiteQueue,
)
from tests.queue.conftest import T0, FakeClock, msg

DELIVERED, DEFERRED, BOUNCED = (
    RecipientState.DELIVERED,
    RecipientState.DEFERRED,
    RecipientState.BOUNCED,
)


async def test_enqueue_then_get(store: SQLiteQueue) -> None:
    new = NewMessage(
        "app@example.org",
        ["a@example.com", "b@example.net", "a@example.com"],  # duplicate stored once
        b"Subject: hi\r\n\r\nhello\r\n",
        origin="smtp:user@127.0.0.1",
        envid="env-1",
    )
    message_id = await store.enqueue(new)
    assert len(message_id) == 20 and int(message_id, 16) >= 0
    got = await store.get(message_id, with_data=True)
    assert got is not None
    assert (got.sender, got.state, got.created_at, got.size) == (
        "app@example.org",
        MessageState.ACTIVE,
        T0,
        len(new.data),
    )
    assert (got.origin, got.envid, got.is_bounce, got.data) == (
        "smtp:user@127.0.0.1",
        "env-1",
        False,
        new.data,
    )
    assert [r.recipient for r in got.recipients] == ["a@example.com", "b@example.net"]
    assert {r.state for r in got.recipients} == {RecipientState.PENDING}
    assert (await store.get(message_id)).data is None  # type: ignore[union-attr]
    assert await store.get("ffffffffffffffffffff") is None


async def test_ids_sort_by_arrival_even_with_a_frozen_clock(store: SQLiteQueue) -> None:
    ids = [await store.enqueue(msg()) for _ in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20


async def test_lease_record_deliver_defer_bounce(store: SQLiteQueue, clock: FakeClock) -> None:
    message_id = await store.enqueue(msg("a@x.test", "b@x.test", "c@y.test"))
    [lease] = await store.lease_due(clock.now, 10, 60)
    assert lease.message.id == message_id and lease.message.data == b"body"
    assert lease.expires_at == clock.now + 60
    assert await store.lease_due(clock.now, 10, 60) == []  # leased: nobody else gets it
    clock.advance(5)
    updated = await store.record(
        lease,
        [
            AttemptOutcome("a@x.test", DELIVERED, "250 2.0.0 ok", host="mx.x.test"),
            AttemptOutcome("b@x.test", DEFERRED, "451 4.3.0 try later", next_attempt=T0 + 900),
            AttemptOutcome("c@y.test", BOUNCED, "550 5.1.1 no such user"),
        ],
    )
    a, b, c = updated.recipients
    assert updated.state is MessageState.ACTIVE
    assert (a.state, a.attempts, a.last_reply, a.last_host) == (
        DELIVERED,
        1,
        "250 2.0.0 ok",
        "mx.x.test",
    )
    assert (b.state, b.attempts, b.next_attempt) == (DEFERRED, 1, T0 + 900)
    assert (c.state, c.updated_at) == (BOUNCED, T0 + 5)
    # Not due before next_attempt; then only the deferred recipient is handed out.
    assert await store.lease_due(T0 + 899, 10, 60) == []
    [again] = await store.lease_due(T0 + 900, 10, 60)
    assert [r.recipient for r in again.message.recipients] == ["b@x.test"]
    done = await store.record(again, [AttemptOutcome("b@x.test", DELIVERED, "250 ok")])
    assert done.state is MessageState.DONE
    assert done.recipients[1].attempts == 2
    assert await store.lease_due(T0 + 10**6, 10, 60) == []
    assert (await store.get(message_id, with_data=True)).data is None  # type: ignore[union-attr]


async def test_deferral_without_a_time_uses_the_retry_policy(
    db_path: Path, clock: FakeClock
) -> None:
    async with SQLiteQueue(db_path, clock=clock, retry=RetryPolicy(jitter=0)) as store:
        await store.enqueue(msg("a@x.test"))
        for expected in (300, 600, 1200):
            [lease] = await store.lease_due(clock.now, 10, 60)
            after = await store.record(lease, [AttemptOutcome("a@x.test", DEFERRED, "421")])
            assert after.recipients[0].next_attempt == clock.now + expected
            clock.advance(expected)


async def test_outcomes_are_checked_and_nothing_is_half_applied(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    await store.enqueue(msg("a@x.test", "b@x.test"))
    [lease] = await store.lease_due(clock.now, 10, 60)
    with pytest.raises(QueueError, match="not a recipient"):
        await store.record(
            lease,
            [AttemptOutcome("a@x.test", DELIVERED), AttemptOutcome("z@x.test", DELIVERED)],
        )
    with pytest.raises(QueueError, match="delivered, deferred or bounced"):
        await store.record(lease, [AttemptOutcome("a@x.test", RecipientState.PENDING)])
    current = await store.get(lease.message.id)
    assert current is not None
    assert [r.state for r in current.recipients] == [RecipientState.PENDING] * 2
    assert store.stats.failed == 2


async def test_a_recipient_left_out_of_the_outcomes_stays_due(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    await store.enqueue(msg("a@x.test", "b@x.test"))
    [lease] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease, [AttemptOutcome("a@x.test", DELIVERED)])
    [again] = await store.lease_due(clock.now, 10, 60)
    assert [r.recipient for r in again.message.recipients] == ["b@x.test"]


async def test_release_gives_the_message_back(store: SQLiteQueue, clock: FakeClock) -> None:
    await store.enqueue(msg())
    [lease] = await store.lease_due(clock.now, 10, 60)
    await store.release(lease)
    [again] = await store.lease_due(clock.now, 10, 60)
    assert again.token != lease.token
    await store.release(lease)  # a stale token releases nothing
    assert await store.lease_due(clock.now, 10, 60) == []


async def test_release_with_retry_at_parks_without_an_attempt(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    message_id = await store.enqueue(msg())
    [lease] = await store.lease_due(clock.now, 10, 60)
    await store.release(lease, retry_at=clock.now + 5)
    assert await store.lease_due(clock.now + 4, 10, 60) == []  # parked
    [again] = await store.lease_due(clock.now + 5, 10, 60)
    assert again.message.id == message_id
    assert all(r.attempts == 0 for r in again.message.recipients)  # not an attempt


async def test_enqueue_leased_is_stored_and_leased(store: SQLiteQueue, clock: FakeClock) -> None:
    lease = await store.enqueue_leased(msg(), 60)
    assert lease.message.data is not None and lease.message.recipients
    stored = await store.get(lease.message.id, with_data=True)
    assert stored is not None and stored.data == lease.message.data  # durable
    assert await store.lease_due(clock.now, 10, 60) == []  # already leased
    outcomes = [
        AttemptOutcome(r.recipient, RecipientState.DELIVERED) for r in lease.message.recipients
    ]
    done = await store.record(lease, outcomes)
    assert done.state is MessageState.DONE


async def test_reclaim_leases_after_a_crash(store: SQLiteQueue, clock: FakeClock) -> None:
    message_id = await store.enqueue(msg())
    [lease] = await store.lease_due(clock.now, 10, 600)
    assert await store.lease_due(clock.now, 10, 600) == []  # leased: not due
    assert await store.reclaim_leases() == 1  # the holder died; the next run voids it
    [again] = await store.lease_due(clock.now, 10, 600)
    assert again.message.id == message_id and again.token != lease.token
    assert await store.reclaim_leases() == 1
    assert await store.reclaim_leases() == 0


async def test_lease_due_pages_oldest_due_first(store: SQLiteQueue, clock: FakeClock) -> None:
    ids = []
    for _ in range(5):
        ids.append(await store.enqueue(msg()))
        clock.advance(1)
    first = await store.lease_due(clock.now, 2, 60)
    second = await store.lease_due(clock.now, 2, 60)
    third = await store.lease_due(clock.now, 2, 60)
    assert [lease.message.id for lease in first + second + third] == ids
    with pytest.raises(QueueError, match="limit"):
        await store.lease_due(clock.now, 0, 60)
    with pytest.raises(QueueError, match="lease_seconds"):
        await store.lease_due(clock.now, 1, 0)


async def test_held_messages_are_never_leased(store: SQLiteQueue, clock: FakeClock) -> None:
    held = await store.enqueue(msg())
    other = await store.enqueue(msg())
    assert await store.hold(held) is True
    assert await store.hold(held) is True  # idempotent
    assert (await store.get(held)).state is MessageState.HELD  # type: ignore[union-attr]
    assert [x.message.id for x in await store.lease_due(clock.now + 10**6, 10, 60)] == [other]
    assert await store.release_hold(held) is True
    assert await store.release_hold(held) is False  # not on hold any more
    [lease] = await store.lease_due(clock.now, 10, 60)
    assert lease.message.id == held
    assert await store.hold("00000000000000000000") is False
    assert await store.release_hold("00000000000000000000") is False


async def test_hold_while_leased_takes_effect_after_the_attempt(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    message_id = await store.enqueue(msg("a@x.test"))
    [lease] = await store.lease_due(clock.now, 10, 60)
    assert await store.hold(message_id)
    after = await store.record(lease, [AttemptOutcome("a@x.test", DEFERRED, next_attempt=0)])
    assert after.state is MessageState.HELD
    assert await store.lease_due(clock.now, 10, 60) == []
    await store.release_hold(message_id)
    assert len(await store.lease_due(clock.now, 10, 60)) == 1


async def test_done_messages_cannot_be_held(store: SQLiteQueue, clock: FakeClock) -> None:
    message_id = await store.enqueue(msg("a@x.test"))
    [lease] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease, [AttemptOutcome("a@x.test", DELIVERED)])
    assert await store.hold(message_id) is False


async def test_retry_now_makes_deferred_recipients_due(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    first = await store.enqueue(msg("a@x.test", "b@x.test"))
    second = await store.enqueue(msg("c@x.test"))
    leases = await store.lease_due(clock.now, 10, 60)
    for lease in leases:
        await store.record(
            lease,
            [
                AttemptOutcome(r.recipient, DEFERRED, "451", next_attempt=T0 + 3600)
                for r in lease.message.recipients
            ],
        )
    assert await store.lease_due(clock.now, 10, 60) == []
    assert await store.retry_now(first) == 2
    assert [x.message.id for x in await store.lease_due(clock.now, 10, 60)] == [first]
    assert await store.retry_now() == 1  # the other message's one recipient
    [lease] = await store.lease_due(clock.now, 10, 60)
    assert lease.message.id == second
    assert await store.retry_now() == 0


async def test_retry_now_keeps_a_live_lease(store: SQLiteQueue, clock: FakeClock) -> None:
    await store.enqueue(msg("a@x.test", "b@x.test"))
    [lease] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease, [AttemptOutcome("a@x.test", DEFERRED, next_attempt=T0 + 999)])
    [lease] = await store.lease_due(clock.now, 10, 60)  # b is still due
    assert await store.retry_now() == 1
    assert await store.lease_due(clock.now, 10, 60) == []  # still leased


async def test_delete(store: SQLiteQueue, clock: FakeClock) -> None:
    message_id = await store.enqueue(msg())
    [lease] = await store.lease_due(clock.now, 10, 60)
    assert await store.delete(message_id) is True
    assert await store.delete(message_id) is False
    assert await store.get(message_id) is None
    with pytest.raises(QueueError, match="no longer in the queue"):
        await store.record(lease, [AttemptOutcome("rcpt@example.com", DELIVERED)])
    await store.release(lease)  # harmless
    counts = await store.counts()
    assert sum(counts.messages.values()) == sum(counts.recipients.values()) == 0


async def test_a_delay_warning_is_claimed_once_per_active_message(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    waiting, finished = await store.enqueue(msg("a@x.test")), await store.enqueue(msg("b@x.test"))
    [_, lease] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease, [AttemptOutcome("b@x.test", DELIVERED)])
    assert await store.claim_delay_warning(waiting) is True
    assert await store.claim_delay_warning(waiting) is False  # told already
    assert await store.claim_delay_warning(finished) is False  # done: nothing to warn of
    assert await store.claim_delay_warning("ffffffffffffffffffff") is False  # unknown
    # Forgotten with the message: nothing is left behind in the file.
    assert await store.delete(waiting) is True
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM delay_warnings").fetchone() == (0,)


async def test_list_filters_and_pagination(store: SQLiteQueue, clock: FakeClock) -> None:
    a = await store.enqueue(msg("u@Example.COM", sender="Alice@a.test"))
    b = await store.enqueue(msg("v@other.test", "w@example.com"))
    c = await store.enqueue(msg("x@other.test"))
    await store.hold(c)
    [lease_a, lease_b] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease_a, [AttemptOutcome("u@Example.COM", DELIVERED)])
    await store.record(
        lease_b,
        [AttemptOutcome("v@other.test", DEFERRED), AttemptOutcome("w@example.com", BOUNCED)],
    )

    async def ids(**kwargs: object) -> list[str]:
        return [m.id for m in await store.list(QueueFilter(**kwargs))]  # type: ignore[arg-type]

    assert await ids() == [a, b, c]
    assert await ids(state=MessageState.DONE) == [a]
    assert await ids(state=MessageState.HELD) == [c]
    assert await ids(state=MessageState.ACTIVE) == [b]
    assert await ids(sender="alice@A.test") == [a]
    assert await ids(recipient_state=DEFERRED) == [b]
    assert await ids(recipient_state=RecipientState.PENDING) == [c]
    assert await ids(recipient_domain="example.com") == [a, b]
    # One recipient must match both: b's example.com recipient bounced, not deferred.
    assert await ids(recipient_domain="example.com", recipient_state=DEFERRED) == []
    assert await ids(limit=2) == [a, b]
    assert await ids(limit=2, after_id=b) == [c]
    listed = await store.list(QueueFilter(limit=1, after_id=a))
    assert listed[0].data is None and len(listed[0].recipients) == 2
    with pytest.raises(QueueError, match="limit"):
        await store.list(QueueFilter(limit=0))


async def test_counts(store: SQLiteQueue, clock: FakeClock) -> None:
    await store.enqueue(msg("a@x.test", "b@x.test"))
    held = await store.enqueue(msg("c@x.test"))
    await store.hold(held)
    [lease] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease, [AttemptOutcome("a@x.test", DELIVERED)])
    counts = await store.counts()
    assert counts.messages == {"active": 1, "held": 1, "done": 0}
    assert counts.recipients == {"pending": 2, "delivered": 1, "deferred": 0, "bounced": 0}


async def test_expired_leases_old_messages_for_bouncing(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    old = await store.enqueue(msg("a@x.test", "b@x.test"))
    bounce = await store.enqueue(NewMessage("", ["app@example.org"], b"dsn", is_bounce=True))
    clock.advance(3600)
    young = await store.enqueue(msg())
    [lease] = await store.lease_due(clock.now, 1, 60)  # a worker has `old`, recipient a
    await store.record(lease, [AttemptOutcome("a@x.test", DELIVERED)])
    now = T0 + 2 * 86400
    leases = await store.expired(now, 2 * 86400, 86400, 10)
    by_id = {x.message.id: x for x in leases}
    assert set(by_id) == {old, bounce}
    assert young not in by_id
    assert [r.recipient for r in by_id[old].message.recipients] == ["b@x.test"]
    assert by_id[old].message.data == b"body"
    assert await store.expired(now, 2 * 86400, 86400, 10) == []  # leased now
    assert all(x.message.id == young for x in await store.lease_due(now, 10, 60))
    done = await store.record(by_id[old], [AttemptOutcome("b@x.test", BOUNCED, "expired")])
    assert done.state is MessageState.DONE


async def test_bad_input_is_refused_and_nothing_is_stored(store: SQLiteQueue) -> None:
    bad = [
        NewMessage("a@x.test", [], b"x"),
        NewMessage("a@x.test", "b@x.test", b"x"),
        NewMessage("a@x.test", ["b@x.test\r\nRCPT TO:<c@x.test>"], b"x"),
        NewMessage("a@x.test", [""], b"x"),
        NewMessage("a\n@x.test", ["b@x.test"], b"x"),
        NewMessage("a@x.test", ["b@x.test"], "text"),  # type: ignore[arg-type]
    ]
    for new in bad:
        with pytest.raises(QueueError):
            await store.enqueue(new)
    assert sum((await store.counts()).messages.values()) == 0
    assert store.stats.requests == 0


async def test_purge_forgets_old_done_messages(store: SQLiteQueue, clock: FakeClock) -> None:
    done = await store.enqueue(msg("a@x.test"))
    active = await store.enqueue(msg("b@x.test"))
    [lease, _] = await store.lease_due(clock.now, 10, 60)
    await store.record(lease, [AttemptOutcome("a@x.test", DELIVERED)])
    assert await store.purge(T0 - 1) == 0
    assert await store.purge(T0 + 1) == 1
    assert await store.get(done) is None and await store.get(active) is not None


async def test_not_open_and_bad_settings(db_path: Path) -> None:
    store = SQLiteQueue(db_path)
    with pytest.raises(QueueError, match="not open"):
        await store.enqueue(msg())
    with pytest.raises(QueueError, match="not open"):
        await store.get("x")
    with pytest.raises(ConfigError, match="max_batch"):
        SQLiteQueue(db_path, max_batch=0)
    with pytest.raises(ConfigError, match="group_commit_window"):
        SQLiteQueue(db_path, group_commit_window=-1)
    missing = SQLiteQueue(db_path, create=False)
    with pytest.raises(QueueError, match="no queue database"):
        await missing.open()
