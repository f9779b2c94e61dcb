"""Durability, crashes, group commit, several stores on one file, and paging at depth."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from mxpress.errors import QueueError
from mxpress.queue import AttemptOutcome, MessageState, RecipientState, SQLiteQueue
from mxpress.queue.groupcommit import GroupCommitWriter
from tests.queue.conftest import FakeClock, msg

DELIVERED = RecipientState.DELIVERED

# The child enqueues from 8 concurrent tasks and prints each id only after `enqueue`
# returned; before that it leases one message and dies holding the lease.
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from mxpress.queue import NewMessage, SQLiteQueue

    async def main():
        store = SQLiteQueue(sys.argv[1])
        await store.open()
        new = NewMessage("a@x.test", ["b@y.test"], b"x" * 200)
        first = await store.enqueue(new)
        [lease] = await store.lease_due(time.time(), 1, 30.0)
        print("leased", first, lease.expires_at, flush=True)

        async def writer():
            while True:
                print("stored", await store.enqueue(new), flush=True)

        await asyncio.gather(*(writer() for _ in range(8)))

    asyncio.run(main())
    """
)


def test_sigkill_right_after_enqueue_returned_loses_nothing(db_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    out = child.stdout

    def line() -> list[str]:
        words = out.readline().split()
        if not words:
            child.kill()
            pytest.fail(f"the child died early: {child.stderr.read()}")  # type: ignore[union-attr]
        return words

    try:
        _, leased_id, expires = line()
        stored = [line()[1] for _ in range(300)]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, err
    # Every id the child printed had been acknowledged: all of them must be on disk.
    stored += [line.split()[1] for line in rest.splitlines() if line.startswith("stored ")]

    async def check() -> None:
        async with SQLiteQueue(db_path, create=False) as store:
            for message_id in stored:
                assert await store.get(message_id) is not None, message_id
            # The dead process's lease holds until it expires, then the message is due.
            before = await store.lease_due(float(expires) - 1, 10**6, 60)
            assert leased_id not in {x.message.id for x in before}
            after = await store.lease_due(float(expires), 10**6, 60)
            assert [x.message.id for x in after] == [leased_id]

    asyncio.run(check())


async def test_abandoned_lease_is_delivered_again_after_restart(
    db_path: Path, clock: FakeClock
) -> None:
    async with SQLiteQueue(db_path, clock=clock) as first:
        message_id = await first.enqueue(msg("a@x.test"))
        [lost] = await first.lease_due(clock.now, 10, 60)
    # "Restart": a new store on the same file; the old lease has not run out yet.
    async with SQLiteQueue(db_path, clock=clock) as second:
        assert await second.lease_due(clock.now + 59, 10, 60) == []
        [lease] = await second.lease_due(clock.now + 60, 10, 60)
        assert lease.message.id == message_id and lease.token != lost.token
        # The first worker comes back late: its news is kept, the new lease is not broken.
        late = await second.record(lost, [AttemptOutcome("a@x.test", DELIVERED, "250 ok")])
        assert late.state is MessageState.DONE
        final = await second.record(lease, [AttemptOutcome("a@x.test", RecipientState.BOUNCED)])
        assert final.recipients[0].state is DELIVERED  # a final state never changes


async def test_two_stores_on_one_file(store: SQLiteQueue, db_path: Path, clock: FakeClock) -> None:
    async with SQLiteQueue(db_path, clock=clock) as other:
        first = await store.enqueue(msg())
        seen = await other.get(first)
        assert seen is not None and seen.id == first
        assert await other.hold(first)
        assert await store.lease_due(clock.now, 10, 60) == []
        assert await other.release_hold(first)
        for _ in range(39):
            await other.enqueue(msg())
        # Both lease at once: every message goes to exactly one of them.
        a, b = await asyncio.gather(
            store.lease_due(clock.now, 25, 60), other.lease_due(clock.now, 25, 60)
        )
        ids_a, ids_b = {x.message.id for x in a}, {x.message.id for x in b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == 40


async def test_group_commit_shares_fsyncs(db_path: Path) -> None:
    async with SQLiteQueue(db_path) as store:
        ids = await asyncio.gather(*(store.enqueue(msg()) for _ in range(200)))
        assert len(set(ids)) == 200
        stats = store.stats
        assert stats.requests == 200 and stats.commits <= 20 and stats.max_batch >= 10
        counts = await store.counts()
        assert counts.messages["active"] == 200


async def test_one_failing_request_does_not_sink_its_batch(
    store: SQLiteQueue, clock: FakeClock
) -> None:
    await store.enqueue(msg("a@x.test"))
    [lease] = await store.lease_due(clock.now, 1, 60)
    results = await asyncio.gather(
        *(store.enqueue(msg()) for _ in range(50)),
        store.record(lease, [AttemptOutcome("nobody@x.test", DELIVERED)]),
        *(store.enqueue(msg()) for _ in range(50)),
        return_exceptions=True,
    )
    assert [type(r) for r in results].count(QueueError) == 1
    assert isinstance(results[50], QueueError)
    assert (await store.counts()).messages["active"] == 101


async def test_a_request_that_fails_halfway_is_undone_alone_in_one_commit(
    tmp_path: Path,
) -> None:
    # The batch runs without savepoints first; the failure sends it round again with one
    # savepoint per request, inside the same transaction: one commit, one write undone.
    def setup(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE t (v INTEGER)")

    def insert(v: int) -> Callable[[sqlite3.Connection], int]:
        def op(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?)", (v,))
            if v == 13:
                raise ValueError("thirteen")  # after its write
            return v

        return op

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)

    writer = GroupCommitWriter(connect, setup, window=0.2, max_batch=100)
    await writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit(insert(v)) for v in range(20)), return_exceptions=True
        )
        stored = await writer.submit(
            lambda conn: sorted(v for (v,) in conn.execute("SELECT v FROM t"))
        )
    finally:
        await writer.stop()
    assert isinstance(results[13], ValueError)
    assert [r for r in results if not isinstance(r, ValueError)] == stored
    assert stored == [v for v in range(20) if v != 13]
    stats = writer.stats
    assert (stats.batches, stats.commits, stats.failed) == (2, 2, 1)  # 20 writes + 1 read


async def test_cancelled_enqueue_that_has_not_run_is_not_stored(db_path: Path) -> None:
    async with SQLiteQueue(db_path, group_commit_window=0.05) as store:
        # Ten at once: the writer has seen company, so the next batch waits for as many
        # (more than will come), the whole window.
        await asyncio.gather(*(store.enqueue(msg()) for _ in range(10)))
        assert store.stats.max_batch >= 5
        first = asyncio.ensure_future(store.enqueue(msg()))
        await asyncio.sleep(0)
        doomed = asyncio.ensure_future(store.enqueue(msg()))
        await asyncio.sleep(0)
        doomed.cancel()
        await first  # the batch (first + doomed) ran after the cancel, inside the window
        assert store.stats.skipped == 1
        assert (await store.counts()).messages["active"] == 11


async def test_the_window_waits_only_for_company(db_path: Path) -> None:
    async with SQLiteQueue(db_path, group_commit_window=0.3) as store:
        start = time.perf_counter()
        for _ in range(5):  # a lone writer: every batch has one request, no wait
            await store.enqueue(msg())
        assert time.perf_counter() - start < 0.3
        await asyncio.gather(*(store.enqueue(msg()) for _ in range(4)))  # company
        start = time.perf_counter()
        await store.enqueue(msg())  # alone now: the writer waited for company in vain
        assert time.perf_counter() - start >= 0.25
        start = time.perf_counter()
        await store.enqueue(msg())  # ... and learned: no wait
        assert time.perf_counter() - start < 0.25
        assert (await store.counts()).messages["active"] == 11


async def test_completed_company_hands_the_writer_a_turn(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer runs as a batch thread: once the company it waits for is complete, the
    # loop gives it the core (sched_yield) rather than making the commit wait for the
    # loop to sleep. Once per completed window, and never for a lone writer.
    yields: list[float] = []
    real_yield = os.sched_yield

    def counting_yield() -> None:
        yields.append(time.monotonic())
        real_yield()

    monkeypatch.setattr(os, "sched_yield", counting_yield)
    async with SQLiteQueue(db_path, group_commit_window=1.0) as store:
        for _ in range(3):
            await store.enqueue(msg())
        assert yields == []  # a lone writer never waits for company: nothing to hand over
        await asyncio.gather(*(store.enqueue(msg()) for _ in range(3)))  # a batch of 3
        first = asyncio.ensure_future(store.enqueue(msg()))
        deadline = time.monotonic() + 5
        while store._writer._want == 0:  # the writer waits in its window for 2 more
            assert time.monotonic() < deadline, "the writer never waited for company"
            await asyncio.sleep(0.001)
        start = time.monotonic()
        await asyncio.gather(first, store.enqueue(msg()), store.enqueue(msg()))
        assert time.monotonic() - start < 0.5  # committed on company, not the 1 s window
        assert len(yields) == 1
        assert (await store.counts()).messages["active"] == 9


async def test_due_paging_stays_flat_at_depth(db_path: Path, clock: FakeClock) -> None:
    body = b"x" * 500
    async with SQLiteQueue(db_path, clock=clock) as store:
        for _ in range(40):  # 20,000 messages, 500 concurrent enqueues at a time
            await asyncio.gather(*(store.enqueue(msg(data=body)) for _ in range(500)))
            clock.advance(1)
        tracemalloc.start()
        try:
            start = time.perf_counter()
            leases = await store.lease_due(clock.now, 100, 60)
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(leases) == 100
        # 100 leases are ~100 kB of objects; all 20,000 bodies alone would be 10 MB.
        assert peak < 1_000_000, peak
        assert elapsed < 0.5
        assert leases[0].message.created_at == clock.now - 40  # oldest first

    # The due query is an index range scan: no table scan, no sort of the whole queue.
    with sqlite3.connect(db_path) as conn:
        plan = " | ".join(
            row[3]
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE state = 'active'"
                " AND next_due <= ? ORDER BY next_due LIMIT ?",
                (0, 100),
            )
        )
    assert "USING INDEX messages_due" in plan or "USING COVERING INDEX messages_due" in plan
    assert "TEMP B-TREE" not in plan


def test_the_file_is_wal_and_fsyncs_on_commit(db_path: Path) -> None:
    async def run() -> None:
        async with SQLiteQueue(db_path) as store:
            await store.enqueue(msg())

    asyncio.run(run())
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("version", [99])
def test_a_newer_schema_is_refused(db_path: Path, version: int) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {version}")

    async def run() -> None:
        with pytest.raises(QueueError, match="schema version 99"):
            await SQLiteQueue(db_path).open()

    asyncio.run(run())


async def test_open_cancelled_midway_leaves_no_writer_thread(db_path: Path) -> None:
    # E.g. the relay stopping while its queue-depth task opens another worker's file.
    store = SQLiteQueue(db_path)
    opening = asyncio.ensure_future(store.open())
    await asyncio.sleep(0)  # the writer thread is started; open() awaits it
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(opening, 10)
    writers = [t for t in threading.enumerate() if t.name == "mxpress-queue-writer"]
    for thread in writers:
        thread.join(5)
    assert not any(t.is_alive() for t in writers)
