"""The delivery loop against a real queue (SQLite) and real SMTP servers on loopback."""

from __future__ import annotations

import asyncio
import email
import time
from collections.abc import AsyncIterator, Callable, Sequence
from email import policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from mxpress.delivery.result import SendResult
from mxpress.delivery.scheduler import Scheduler
from mxpress.errors import QueueError
from mxpress.mailer import Mailer
from mxpress.protocol.client import Outgoing
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.sqlite import SQLiteQueue
from mxpress.queue.store import (
    AttemptOutcome,
    Lease,
    MessageState,
    NewMessage,
    QueuedMessage,
    RecipientState,
)
from tests.lab.servers import AiosmtpdServer, PostfixServer, RecordingHandler

MSG = b"From: a@x.test\r\nTo: b@example.test\r\nSubject: queued\r\n\r\nhello\r\n"
FAST = RetryPolicy(first_retry=0.05, max_backoff=0.2, jitter=0.0)


class Seen:
    """Every attempt the scheduler made, with the message it carried."""

    def __init__(self) -> None:
        self.attempts: list[tuple[QueuedMessage, SendResult, list[AttemptOutcome]]] = []

    def __call__(self, m: QueuedMessage, r: SendResult, o: object) -> None:
        self.attempts.append((m, r, list(o)))  # type: ignore[call-overload]

    def dsns(self) -> list[QueuedMessage]:
        return [m for m, _, _ in self.attempts if m.origin.startswith("dsn:")]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteQueue]:
    async with SQLiteQueue(tmp_path / "queue.sqlite3", retry=FAST) as s:
        yield s


async def run_until(store: SQLiteQueue, ready: Callable[[], object], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ok = ready()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def is_done(store: SQLiteQueue, message_id: str) -> bool:
    return await state(store, message_id) is MessageState.DONE


def scheduler(
    store: SQLiteQueue, mailer: Mailer, seen: Seen, policy: RetryPolicy = FAST
) -> Scheduler:
    return Scheduler(
        store,
        mailer,
        policy,
        hostname="relay.test",
        poll_interval=0.05,
        observer=seen,
        expiry_interval=0.05,
    )


def dsn_report(dsn: QueuedMessage) -> tuple[EmailMessage, list[Message]]:
    """A DSN parsed: the whole report, and the blocks of its message/delivery-status part
    (the per-message block first, then one per recipient)."""
    report = email.message_from_bytes(dsn.data or b"", policy=policy.default)
    assert isinstance(report, EmailMessage)
    status = next(
        p for p in report.iter_parts() if p.get_content_type() == "message/delivery-status"
    )
    return report, status.get_payload()


async def state(store: SQLiteQueue, message_id: str) -> MessageState:
    m = await store.get(message_id)
    assert m is not None
    return m.state


async def test_delivered_and_done(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = scheduler(store, m, seen)
        s.start()
        ids = [
            await store.enqueue(NewMessage("a@x.test", [f"r{i}@example.test"], MSG))
            for i in range(20)
        ]
        s.wake()
        await run_until(store, lambda: len(sink_handler.messages) >= 20)
        await s.stop()
    assert [await state(store, i) for i in ids] == [MessageState.DONE] * 20
    assert s.stats.delivered == 20 and s.stats.bounced == 0


async def test_transient_then_delivered(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.rcpt_replies = {"busy@example.test": "450 4.2.1 mailbox busy, try later"}
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = scheduler(store, m, seen)
        s.start()
        message_id = await store.enqueue(NewMessage("a@x.test", ["busy@example.test"], MSG))
        await run_until(store, lambda: s.stats.deferred >= 1)
        stored = await store.get(message_id)
        assert stored is not None and stored.state is MessageState.ACTIVE
        [r] = stored.recipients
        assert r.state is RecipientState.DEFERRED and r.attempts == 1 and "450" in r.last_reply
        sink_handler.rcpt_replies = {}  # the mailbox frees up
        await run_until(store, lambda: len(sink_handler.messages) >= 1)
        await run_until(store, lambda: s.stats.delivered >= 1)
        await s.stop()
    assert await state(store, message_id) is MessageState.DONE
    assert not seen.dsns()


async def test_a_long_delay_warns_the_sender_once(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.rcpt_replies = {"busy@example.test": "452 4.2.2 mailbox full"}
    warn = RetryPolicy(first_retry=0.05, max_backoff=0.1, jitter=0.0, delay_warning=0.3)
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = scheduler(store, m, seen, warn)
        s.start()
        message_id = await store.enqueue(NewMessage("sender@x.test", ["busy@example.test"], MSG))
        await run_until(store, lambda: seen.dsns())
        tries = s.stats.deferred
        await run_until(store, lambda: s.stats.deferred >= tries + 3)  # still deferred...
        sink_handler.rcpt_replies = {}
        await run_until(store, lambda: is_done(store, message_id))
        await run_until(store, lambda: len(sink_handler.messages) >= 2)  # the warning too
        await s.stop()
    # ... and still one warning, to the sender, from <>, while the message went on.
    [dsn] = seen.dsns()
    assert s.stats.delay_warnings == 1 and s.stats.dsn_sent == 1
    assert dsn.sender == "" and [r.recipient for r in dsn.recipients] == ["sender@x.test"]
    report, blocks = dsn_report(dsn)
    assert report["Subject"].startswith("Delivery delayed")
    block = blocks[1]
    assert block["Final-Recipient"] == "rfc822; busy@example.test"
    assert (block["Action"], block["Status"]) == ("delayed", "4.2.2")
    assert "452" in block["Diagnostic-Code"] and block["Will-Retry-Until"]
    stored = await store.get(message_id)
    assert stored is not None and stored.recipients[0].state is RecipientState.DELIVERED


async def test_permanent_failure_bounces_to_sender(
    store: SQLiteQueue, postfix: PostfixServer
) -> None:
    seen = Seen()
    async with Mailer(f"smtp+plain://{postfix.host}:{postfix.port}", timeout=20) as m:
        s = scheduler(store, m, seen)
        s.start()
        message_id = await store.enqueue(
            NewMessage("sender@x.test", ["refused@example.test", "ok@example.test"], MSG)
        )
        await run_until(store, lambda: seen.dsns())
        await run_until(store, lambda: is_done(store, message_id))
        await s.stop()
    assert await state(store, message_id) is MessageState.DONE
    [dsn] = seen.dsns()
    assert dsn.sender == "" and [r.recipient for r in dsn.recipients] == ["sender@x.test"]
    report, blocks = dsn_report(dsn)
    assert report.get_content_type() == "multipart/report"
    assert blocks[1]["Final-Recipient"] == "rfc822; refused@example.test"
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"].startswith("5.")
    assert "550" in blocks[1]["Diagnostic-Code"]
    assert len(blocks) == 2  # only the refused recipient is reported


async def test_expiry_bounces_with_4_4_7(store: SQLiteQueue, postfix: PostfixServer) -> None:
    short = RetryPolicy(first_retry=0.05, max_backoff=0.1, jitter=0.0, max_queue_lifetime=0.4)
    seen = Seen()
    async with Mailer(f"smtp+plain://{postfix.host}:{postfix.port}", timeout=20) as m:
        s = scheduler(store, m, seen, short)
        s.start()
        message_id = await store.enqueue(NewMessage("sender@x.test", ["later@example.test"], MSG))
        await run_until(store, lambda: seen.dsns())
        await run_until(store, lambda: is_done(store, message_id))
        await s.stop()
    stored = await store.get(message_id)
    assert stored is not None and stored.state is MessageState.DONE
    assert stored.recipients[0].state is RecipientState.BOUNCED
    assert stored.recipients[0].attempts >= 2  # it was retried before giving up
    _, blocks = dsn_report(seen.dsns()[0])
    # Postfix gave 450 4.2.0 each time; the DSN says why it stopped trying: expired.
    assert blocks[1]["Status"] == "4.4.7"
    assert "expired" in blocks[1]["Diagnostic-Code"]


@pytest.mark.parametrize(("sender", "is_bounce"), [("", False), ("sender@x.test", True)])
async def test_null_sender_and_bounces_are_never_bounced(
    store: SQLiteQueue, postfix: PostfixServer, sender: str, is_bounce: bool
) -> None:
    seen = Seen()
    async with Mailer(f"smtp+plain://{postfix.host}:{postfix.port}", timeout=20) as m:
        s = scheduler(store, m, seen)
        s.start()
        message_id = await store.enqueue(
            NewMessage(sender, ["refused@example.test"], MSG, is_bounce=is_bounce)
        )
        await run_until(store, lambda: s.stats.bounced >= 1)
        await s.stop()
    assert await state(store, message_id) is MessageState.DONE
    assert s.stats.dsn_sent == 0 and not seen.dsns()
    assert len(seen.attempts) == 1


async def test_stop_gives_leases_back(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.delays = {"MAIL": 5.0}  # the server is slow: deliveries are in flight
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = scheduler(store, m, seen)
        s.start()
        message_id = await store.enqueue(NewMessage("a@x.test", ["b@example.test"], MSG))
        await run_until(store, lambda: s.in_flight >= 1)
        await s.stop(grace=0.1)
    # Not delivered, not lost: due again right away for the next run.
    [lease] = await store.lease_due(10**10, 10, 60)
    assert lease.message.id == message_id


def narrow(store: SQLiteQueue, mailer: Mailer, seen: Seen, ready: int) -> Scheduler:
    """One delivery at a time per domain, and a park long enough to fail any test."""
    return Scheduler(
        store,
        mailer,
        FAST,
        hostname="relay.test",
        poll_interval=0.05,
        observer=seen,
        per_domain=1,
        ready_per_domain=ready,
        park_seconds=3600,
    )


async def test_a_burst_for_one_domain_waits_in_its_ready_queue_not_in_a_park(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.delays = {"MAIL": 0.05}  # each delivery holds the domain's one slot a while
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = narrow(store, m, seen, ready=10)
        s.start()
        for i in range(8):
            await store.enqueue(NewMessage("a@x.test", [f"r{i}@example.test"], MSG))
        s.wake()
        await run_until(store, lambda: s.stats.delivered >= 8)
        await s.stop()
    assert len(sink_handler.messages) == 8
    assert s.stats.parked == 0 and s.stats.readied >= 7


async def test_a_full_ready_queue_parks_and_stop_returns_the_waiting_leases(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.delays = {"MAIL": 5.0}  # the first delivery holds the domain's one slot
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = narrow(store, m, seen, ready=2)
        s.start()
        ids = [
            await store.enqueue(NewMessage("a@x.test", [f"r{i}@example.test"], MSG))
            for i in range(5)
        ]
        s.wake()
        await run_until(store, lambda: s.stats.parked == 2)
        assert s.in_flight == 1 and s.stats.readied == 2
        await s.stop(grace=0.1)
    assert not sink_handler.messages
    # The in-flight one and the two that waited are due again now; the parked two later.
    due = {lease.message.id for lease in await store.lease_due(time.time() + 60, 10, 60)}
    assert len(due) == 3 and due < set(ids)
    for parked in set(ids) - due:
        stored = await store.get(parked)
        assert stored is not None
        assert (stored.recipients[0].next_attempt or 0) > time.time() + 3000


async def test_overflow_of_a_fast_domain_is_parked_for_its_pace_not_park_seconds(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = narrow(store, m, seen, ready=2)  # park_seconds is an hour
        s.start()
        for i in range(3):  # one delivering, two waiting: the pace is learned
            await store.enqueue(NewMessage("a@x.test", [f"first{i}@example.test"], MSG))
        s.wake()
        await run_until(store, lambda: s.stats.delivered >= 3)
        assert s.stats.parked == 0
        for i in range(8):  # more than the ready queue holds: some are parked
            await store.enqueue(NewMessage("a@x.test", [f"then{i}@example.test"], MSG))
        s.wake()
        await run_until(store, lambda: s.stats.delivered >= 11, timeout=20)
        await s.stop()
    assert s.stats.parked >= 1
    assert len(sink_handler.messages) == 11


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_a_lease_that_waited_half_its_time_away_is_given_back_not_started(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.delays = {"MAIL": 0.3}  # one delivery at a time, each a while
    clock = Clock()
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = Scheduler(
            store,
            m,
            FAST,
            hostname="relay.test",
            poll_interval=0.05,
            observer=seen,
            per_domain=1,
            ready_per_domain=5,
            lease_seconds=60,
            clock=clock,
        )
        s.start()
        for i in range(3):
            await store.enqueue(NewMessage("a@x.test", [f"r{i}@example.test"], MSG))
        s.wake()
        await run_until(store, lambda: s.stats.readied >= 2)
        clock.offset = 40  # the waiting leases have 20 of their 60 s left
        await run_until(store, lambda: s.stats.delivered >= 3, timeout=20)
        await s.stop()
    assert s.stats.returned == 2  # given back, leased again afresh, then delivered
    assert len(sink_handler.messages) == 3


class CountingMailer(Mailer):
    """A real Mailer that remembers how many messages each `deliver` call carried."""

    calls: list[int]

    async def deliver(self, outgoings: Sequence[Outgoing]) -> list[SendResult]:
        self.calls.append(len(outgoings))
        return await super().deliver(outgoings)


async def test_fresh_leases_taken_in_one_loop_turn_go_out_together(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    seen = Seen()
    m = CountingMailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10)
    m.calls = []
    async with m:
        s = scheduler(store, m, seen)
        s.start()
        # As the relay does with one group commit's enqueues: all stored, then all taken.
        leases = await asyncio.gather(
            *(
                store.enqueue_leased(NewMessage("a@x.test", [f"r{i}@example.test"], MSG), 60)
                for i in range(6)
            )
        )
        leases.append(await store.enqueue_leased(NewMessage("a@x.test", ["r@other.test"], MSG), 60))
        for lease in leases:
            await s.take(lease)
        assert s.in_flight == 0  # started once this loop turn ends, together
        await asyncio.sleep(0)
        assert s.in_flight == 7
        await run_until(store, lambda: s.stats.attempts >= 7)
        await s.stop()
    assert sorted(m.calls) == [1, 6]  # one call per domain
    assert len(sink_handler.messages) == 7 and len(seen.attempts) == 7
    assert [await state(store, lease.message.id) for lease in leases] == [MessageState.DONE] * 7


async def test_a_message_deleted_mid_delivery_fails_alone(
    store: SQLiteQueue, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    sink_handler.delays = {"MAIL": 0.3}  # time to delete one while the group is out
    seen = Seen()
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = scheduler(store, m, seen)
        s.start()
        leases = [
            await store.enqueue_leased(NewMessage("a@x.test", [f"r{i}@example.test"], MSG), 60)
            for i in range(3)
        ]
        for lease in leases:
            await s.take(lease)
        await run_until(store, lambda: s.in_flight == 3)
        assert await store.delete(leases[1].message.id)
        await run_until(store, lambda: s.stats.errors >= 1 and s.stats.attempts >= 2)
        await s.stop()
    assert s.stats.errors == 1 and s.stats.attempts == 2
    assert {m.id for m, _, _ in seen.attempts} == {leases[0].message.id, leases[2].message.id}
    assert await store.get(leases[1].message.id) is None


async def test_reservations_hold_room_for_mail_being_stored(
    store: SQLiteQueue, sink_server: AiosmtpdServer
) -> None:
    async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
        s = narrow(store, m, Seen(), ready=1)  # room for two: one slot, one ready place
        first, second = s.reserve("a@example.test"), s.reserve("b@example.test")
        assert first == second == "example.test"
        assert s.reserve("c@example.test") is None  # both places promised already
        assert s.reserve("c@other.test") == "other.test"  # another domain has its own
        s.unreserve(second)
        assert s.reserve("c@example.test") == "example.test"
        reservations = ("example.test", "example.test", "other.test")
        leases = await asyncio.gather(  # stored in one commit, then taken, as the relay does
            *(
                store.enqueue_leased(NewMessage("a@x.test", [f"r@{r}"], MSG), s.lease_seconds)
                for r in reservations
            )
        )
        for lease, reservation in zip(leases, reservations, strict=True):
            await s.take(lease, reservation)
        assert s.reserve("d@example.test") is None  # taken, not admitted yet: still held
        await asyncio.sleep(0)  # admitted: the reservations became a slot and a ready place
        assert s.reserve("d@example.test") is None
        assert s.in_flight == 2 and s.stats.readied == 1
        await run_until(store, lambda: s.stats.attempts >= 3)
        assert s.reserve("d@example.test") == "example.test"  # all delivered: room again
        await s.stop()
    assert s.stats.parked == 0


class SlowRecords(SQLiteQueue):
    """Outcomes are written only once `go` is set."""

    go: asyncio.Event

    async def record_many(
        self, attempts: Sequence[tuple[Lease, Sequence[AttemptOutcome]]]
    ) -> list[QueuedMessage | QueueError]:
        await self.go.wait()
        return await super().record_many(attempts)


async def test_a_domain_slot_is_free_once_delivered_not_once_recorded(
    tmp_path: Path, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    async with SlowRecords(tmp_path / "q.sqlite3", retry=FAST) as slow:
        slow.go = asyncio.Event()
        async with Mailer(f"smtp+plain://{sink_server.host}:{sink_server.port}", timeout=10) as m:
            s = narrow(slow, m, Seen(), ready=5)  # one delivery at a time for the domain
            s.start()
            for i in range(3):
                await slow.enqueue(NewMessage("a@x.test", [f"r{i}@example.test"], MSG))
            s.wake()
            # No outcome is written yet, and still all three went out, one after another.
            await run_until(slow, lambda: len(sink_handler.messages) >= 3)
            assert s.stats.attempts == 0 and s.in_flight == 0
            slow.go.set()
            await run_until(slow, lambda: s.stats.attempts >= 3)
            await s.stop()


class CountingStore(SQLiteQueue):
    """Counts lease_due passes."""

    passes = 0

    async def lease_due(self, now: float, limit: int, lease_seconds: float) -> list[Lease]:
        self.passes += 1
        return await super().lease_due(now, limit, lease_seconds)


async def test_a_free_slot_looks_in_the_store_only_when_something_may_wait_there(
    tmp_path: Path, sink_server: AiosmtpdServer, sink_handler: RecordingHandler
) -> None:
    relay = f"smtp+plain://{sink_server.host}:{sink_server.port}"
    async with (
        CountingStore(tmp_path / "q.sqlite3", retry=FAST) as store,
        Mailer(relay, timeout=10) as m,
    ):
        s = Scheduler(store, m, FAST, hostname="relay.test", poll_interval=30)
        s.start()
        await run_until(store, lambda: store.passes == 1)  # the first look: nothing
        for i in range(5):  # fresh mail, each taken in its own loop turn
            lease = await store.enqueue_leased(
                NewMessage("a@x.test", [f"r{i}@example.test"], MSG), s.lease_seconds
            )
            await s.take(lease)
        await run_until(store, lambda: s.stats.attempts >= 5)
        assert store.passes == 1  # five deliveries ended: no pass for nothing
        waiting = await store.enqueue(NewMessage("a@x.test", ["late@example.test"], MSG))
        s.wake()  # stored plainly, as the relay does without room
        await run_until(store, lambda: s.stats.attempts >= 6)
        assert store.passes >= 2 and await is_done(store, waiting)
        await s.stop()
    assert len(sink_handler.messages) == 6
