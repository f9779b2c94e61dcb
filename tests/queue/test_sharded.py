"""ShardedQueue: one view over several workers' queue files, each a real SQLiteQueue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mxpress.errors import ConfigError, QueueError
from mxpress.queue import (
    AttemptOutcome,
    MessageState,
    QueueFilter,
    RecipientState,
    SQLiteQueue,
)
from mxpress.queue.sharded import ShardedQueue, shard_path, shard_paths
from tests.queue.conftest import FakeClock, msg


@pytest.fixture
async def shards(tmp_path: Path, clock: FakeClock) -> AsyncIterator[list[SQLiteQueue]]:
    """Three workers' stores (queue.sqlite3, queue.1.sqlite3, queue.2.sqlite3), open."""
    stores = [SQLiteQueue(shard_path(tmp_path, i), clock=clock) for i in range(3)]
    for store in stores:
        await store.open()
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
async def view(tmp_path: Path, clock: FakeClock) -> AsyncIterator[ShardedQueue]:
    """The CLI's view (own=None); opened lazily, after the shards exist."""
    queue = ShardedQueue(tmp_path, clock=clock)
    try:
        yield queue
    finally:
        await queue.close()


# Which shard each message goes to: uneven runs, so that pages cross shards.
SPREAD = (0, 0, 1, 2, 2, 2, 1, 0, 1, 2, 1)


async def fill(stores: list[SQLiteQueue], clock: FakeClock) -> list[str]:
    """One message per SPREAD entry; returns their ids in arrival order."""
    ids = []
    for k, shard in enumerate(SPREAD):
        clock.advance(1)
        ids.append(await stores[shard].enqueue(msg(f"r{k}@x.test")))
    return ids


async def defer(store: SQLiteQueue, clock: FakeClock, message_id: str) -> None:
    """One attempt that defers every recipient of the message for an hour."""
    [lease] = [
        lease
        for lease in await store.lease_due(clock.now, 100, 60)
        if lease.message.id == message_id
    ]
    await store.record(
        lease,
        [
            AttemptOutcome(r.recipient, RecipientState.DEFERRED, next_attempt=clock.now + 3600)
            for r in lease.message.recipients
        ],
    )
    for other in await store.lease_due(clock.now, 100, 60):
        await store.release(other)


def test_shard_path() -> None:
    assert shard_path(Path("/d"), 0) == Path("/d/queue.sqlite3")
    assert shard_path(Path("/d"), 1) == Path("/d/queue.1.sqlite3")
    assert shard_path(Path("/d"), 12) == Path("/d/queue.12.sqlite3")
    with pytest.raises(ConfigError, match="worker must be >= 0"):
        shard_path(Path("/d"), -1)


def test_shard_paths_order_and_filtering(tmp_path: Path) -> None:
    assert shard_paths(tmp_path / "missing") == []
    assert shard_paths(tmp_path) == []
    names = ["queue.10.sqlite3", "queue.2.sqlite3", "queue.sqlite3", "queue.1.sqlite3"]
    strays = [
        "queue.x.sqlite3",
        "queue.sqlite3-wal",
        "queue.sqlite3-shm",
        "queue.1.sqlite3-wal",
        "queue.0.sqlite3",
        "queue.01.sqlite3",
        "queue.-1.sqlite3",
        "queue.sqlite3.bak",
        "xqueue.sqlite3",
        "queue.sqlite",
    ]
    for name in names + strays:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "queue.3.sqlite3").mkdir()  # not a file
    assert [p.name for p in shard_paths(tmp_path)] == [
        "queue.sqlite3",
        "queue.1.sqlite3",
        "queue.2.sqlite3",
        "queue.10.sqlite3",
    ]
    assert shard_paths(tmp_path)[0] == shard_path(tmp_path, 0)


async def test_get_finds_each_shard(
    shards: list[SQLiteQueue], view: ShardedQueue, clock: FakeClock
) -> None:
    ids = [await store.enqueue(msg(f"to{i}@x.test")) for i, store in enumerate(shards)]
    for i, message_id in enumerate(ids):
        found = await view.get(message_id, with_data=True)
        assert found is not None and found.id == message_id
        assert found.recipients[0].recipient == f"to{i}@x.test" and found.data == b"body"
    assert await view.get("ffffffffffffffffffff") is None


async def test_list_merges_in_id_order_and_pages(
    shards: list[SQLiteQueue], view: ShardedQueue, clock: FakeClock
) -> None:
    ids = await fill(shards, clock)
    assert [len(await s.list(QueueFilter())) for s in shards] == [3, 4, 4]
    assert [m.id for m in await view.list(QueueFilter())] == ids
    assert [m.id for m in await view.list(QueueFilter(limit=4))] == ids[:4]

    paged: list[str] = []
    after = None
    while page := await view.list(QueueFilter(limit=3, after_id=after)):
        assert len(page) <= 3
        paged += [m.id for m in page]
        after = page[-1].id
    assert paged == ids  # every message once, in arrival order

    # Filters apply in every shard.
    assert await view.hold(ids[1]) and await view.hold(ids[5])
    held = await view.list(QueueFilter(state=MessageState.HELD))
    assert [m.id for m in held] == [ids[1], ids[5]]
    only = await view.list(QueueFilter(recipient_domain="x.test", after_id=ids[8]))
    assert [m.id for m in only] == ids[9:]


async def test_counts_sum_over_shards(
    shards: list[SQLiteQueue], view: ShardedQueue, clock: FakeClock
) -> None:
    await shards[0].enqueue(msg("a@x.test", "b@x.test"))
    held = await shards[1].enqueue(msg("c@x.test"))
    await shards[2].enqueue(msg("d@x.test"))
    await shards[1].hold(held)
    counts = await view.counts()
    assert counts.messages == {"active": 2, "held": 1, "done": 0}
    assert counts.recipients == {"pending": 4, "delivered": 0, "deferred": 0, "bounced": 0}


async def test_operations_reach_the_right_shard(
    shards: list[SQLiteQueue], view: ShardedQueue, clock: FakeClock
) -> None:
    in0 = await shards[0].enqueue(msg("a@x.test"))
    in1 = await shards[1].enqueue(msg("b@x.test"))
    in2 = await shards[2].enqueue(msg("c@x.test", "d@x.test"))
    unknown = "ffffffffffffffffffff"

    assert await view.hold(in1) is True
    held = await shards[1].get(in1)
    assert held is not None and held.state is MessageState.HELD
    assert await view.release_hold(in1) is True
    released = await shards[1].get(in1)
    assert released is not None and released.state is MessageState.ACTIVE
    assert await view.release_hold(in1) is False  # not held any more
    assert await view.hold(unknown) is False
    assert await view.release_hold(unknown) is False

    assert await view.delete(in2) is True
    assert await shards[2].get(in2) is None
    assert await view.delete(in2) is False
    assert await view.delete(unknown) is False

    in2 = await shards[2].enqueue(msg("c@x.test", "d@x.test"))
    for store, message_id in ((shards[0], in0), (shards[2], in2)):
        await defer(store, clock, message_id)
    assert await view.retry_now(unknown) == 0
    assert await view.retry_now(in1) == 0  # nothing deferred
    assert await view.retry_now(in2) == 2
    again = await shards[2].get(in2)
    assert again is not None and {r.next_attempt for r in again.recipients} == {clock.now}
    assert await view.retry_now() == 1  # in0's one recipient; in2's are due already
    first = await shards[0].get(in0)
    assert first is not None and first.recipients[0].next_attempt == clock.now


async def test_a_shard_created_later_is_found(tmp_path: Path, clock: FakeClock) -> None:
    async with SQLiteQueue(shard_path(tmp_path, 0), clock=clock) as first:
        old = await first.enqueue(msg())
        async with ShardedQueue(tmp_path, clock=clock) as view:
            assert [m.id for m in await view.list(QueueFilter())] == [old]
            clock.advance(1)
            async with SQLiteQueue(shard_path(tmp_path, 3), clock=clock) as late:
                new = await late.enqueue(msg("late@x.test"))
                found = await view.get(new)
                assert found is not None and found.recipients[0].recipient == "late@x.test"
                assert [m.id for m in await view.list(QueueFilter())] == [old, new]
                assert (await view.counts()).messages["active"] == 2
                assert await view.hold(new) is True
                late_held = await late.get(new)
                assert late_held is not None and late_held.state is MessageState.HELD


async def test_own_gets_the_enqueues_and_stays_open(tmp_path: Path, clock: FakeClock) -> None:
    async with (
        SQLiteQueue(shard_path(tmp_path, 0), clock=clock) as other,
        SQLiteQueue(shard_path(tmp_path, 1), clock=clock) as own,
    ):
        theirs = await other.enqueue(msg())
        clock.advance(1)
        async with ShardedQueue(tmp_path, own, clock=clock) as view:
            mine = await view.enqueue(msg("me@x.test"))
            assert await own.get(mine) is not None and await other.get(mine) is None
            # own's file is not opened a second time: each id once.
            assert [m.id for m in await view.list(QueueFilter())] == [theirs, mine]
            assert (await view.counts()).messages["active"] == 2
        assert await own.get(mine) is not None  # the view did not close own


async def test_own_outside_the_data_dir_is_still_one_of_the_shards(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with SQLiteQueue(tmp_path / "elsewhere" / "q.sqlite3", clock=clock) as own:
        view = ShardedQueue(tmp_path / "empty", own)
        message_id = await view.enqueue(msg())
        assert [m.id for m in await view.list(QueueFilter())] == [message_id]
        await view.close()


async def test_without_own_enqueue_goes_to_worker_0(
    shards: list[SQLiteQueue], view: ShardedQueue
) -> None:
    message_id = await view.enqueue(msg())
    assert await shards[0].get(message_id) is not None
    assert await shards[1].get(message_id) is None


async def test_no_shard_is_a_clear_error(tmp_path: Path) -> None:
    view = ShardedQueue(tmp_path / "nowhere")
    with pytest.raises(QueueError, match=r"^no queue database at .*queue\.sqlite3"):
        await view.open()
    with pytest.raises(QueueError, match="no queue database at"):
        await view.list(QueueFilter())
    with pytest.raises(QueueError, match="no queue database at"):
        await view.enqueue(msg())
    assert not (tmp_path / "nowhere").exists()  # nothing invented


async def test_create_makes_worker_0s_file(tmp_path: Path) -> None:
    async with ShardedQueue(tmp_path / "new", create=True) as view:
        assert shard_paths(tmp_path / "new") == [shard_path(tmp_path / "new", 0)]
        message_id = await view.enqueue(msg())
        assert [m.id for m in await view.list(QueueFilter())] == [message_id]
