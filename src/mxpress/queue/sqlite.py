"""SQLiteQueue: the embedded default QueueStore (one file under the data directory).

Writes go to one writer thread that commits many of them with one fsync (group commit,
see groupcommit.py); reads go to a second connection in a reader thread (WAL readers
never block the writer). The event loop never touches the disk. Another process (the
`mxpress queue` CLI, a second server) may open the same file: WAL plus a busy timeout
make that safe, and every write transaction starts with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from mxpress.errors import ConfigError, QueueError
from mxpress.queue import sqlite_ops as ops
from mxpress.queue import sqlite_reads as reads
from mxpress.queue.groupcommit import GroupCommitWriter, QueueStats
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.sqlite_schema import IdGenerator, connect, ensure_schema
from mxpress.queue.store import (
    AttemptOutcome,
    Lease,
    NewMessage,
    QueueCounts,
    QueuedMessage,
    QueueFilter,
)

if TYPE_CHECKING:
    from mxpress.queue.store import QueueStore

T = TypeVar("T")

_BAD_CHARS = frozenset("\r\n\0")


class SQLiteQueue:
    """`QueueStore` on one SQLite file.

    clock: wall-clock epoch seconds, for created_at/updated_at and default deferrals.
    retry: computes `next_attempt` for a DEFERRED outcome that has none.
    group_commit_window: how long the writer may wait for more requests before it
        commits, and only while writers come in company (the last batch had several):
        then it waits for as many as the last batch had, at most this long. Requests
        that arrive during a commit share the next one anyway, but with a few dozen
        lock-step writers (SMTP sessions) batches stay small and each commit costs far
        more CPU than a request. With two workers and 20 sessions, messages per commit
        went from ~1.7 (no window) to ~3.1 (1 ms) and ~4.2 (2 ms), and relay CPU per
        message fell ~10% at each step, 250 latency unchanged. A lone writer never
        waits (a fixed wait cut one from ~4,000 to ~420 msgs/s in bench/queue_bench.py).
        0: never wait.
    max_batch: most write requests in one transaction (bounds the latency of each).
    busy_timeout: how long to wait for another process's write lock, in seconds.
    create: make the file (and its directory) if missing; False for tools that must
        not invent an empty queue.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
        group_commit_window: float = 0.002,
        max_batch: int = 256,
        busy_timeout: float = 5.0,
        create: bool = True,
    ) -> None:
        if not 0 <= group_commit_window <= 1:
            raise ConfigError(
                f"group_commit_window must be in [0, 1] seconds, got {group_commit_window!r}"
            )
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch!r}")
        if busy_timeout < 0:
            raise ConfigError(f"busy_timeout must be >= 0 seconds, got {busy_timeout!r}")
        self._path = Path(path)
        self._clock = clock
        self._retry = retry if retry is not None else RetryPolicy()
        self._create = create
        self._busy_timeout = busy_timeout
        self._ids = IdGenerator()  # used by the writer thread only
        self._writer = GroupCommitWriter(
            self._connect, ensure_schema, window=group_commit_window, max_batch=max_batch
        )
        self._reader: ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None  # reader thread only

    @property
    def path(self) -> Path:
        return self._path

    @property
    def stats(self) -> QueueStats:
        return self._writer.stats

    def _connect(self) -> sqlite3.Connection:
        return connect(self._path, create=self._create, busy_timeout=self._busy_timeout)

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._reader is not None:
            return
        await self._writer.start()  # creates the schema before any reader looks
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="mxpress-queue-reader")

    async def close(self) -> None:
        """Finish the writes already submitted, then close both connections."""
        reader, self._reader = self._reader, None
        await self._writer.stop()
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            reader.shutdown(wait=False)

    async def __aenter__(self) -> SQLiteQueue:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- writes (writer thread, group-committed) ------------------------------------

    async def enqueue(self, message: NewMessage) -> str:
        """Store durably (fsynced) and return the new id. Duplicate recipients are
        stored once. Raises QueueError for bad input; nothing is stored then."""
        recipients, data = _validated(message)
        now = self._clock()
        return await self._writer.submit(
            lambda conn: ops.enqueue(conn, message, recipients, data, now, self._ids),
            skip_if_cancelled=True,
        )

    async def enqueue_leased(self, message: NewMessage, lease_seconds: float) -> Lease:
        """`enqueue`, and lease the new message in the same transaction: the relay hands
        fresh mail straight to delivery without a lease_due round trip through the file.
        Not part of QueueStore (an optimisation of this store)."""
        recipients, data = _validated(message)
        _check_limit(1, lease_seconds)
        now = self._clock()
        return await self._writer.submit(
            lambda conn: ops.enqueue_leased(
                conn, message, recipients, data, now, self._ids, lease_seconds
            ),
            skip_if_cancelled=True,
        )

    async def lease_due(self, now: float, limit: int, lease_seconds: float) -> builtins.list[Lease]:
        _check_limit(limit, lease_seconds)
        return await self._writer.submit(
            lambda conn: ops.lease_due(conn, now, limit, lease_seconds)
        )

    async def record(self, lease: Lease, outcomes: Sequence[AttemptOutcome]) -> QueuedMessage:
        """Apply the outcomes and release the lease. If the lease ran out and another
        worker has the message now, the outcomes are still recorded (a delivery that
        happened is news) but that worker's lease is kept; a recipient already
        delivered or bounced never changes again. QueueError if the message is gone."""
        now = self._clock()
        outcomes = tuple(outcomes)
        message, _ = await self._writer.submit(
            lambda conn: ops.record(conn, lease, outcomes, now, self._retry)
        )
        return message

    async def record_many(
        self, attempts: Sequence[tuple[Lease, Sequence[AttemptOutcome]]]
    ) -> builtins.list[QueuedMessage | QueueError]:
        """`record` for several attempts in one request of the writer (one hand-over and
        one wake-up for all). A QueueError for one attempt is its answer alone: `record`
        raises those before it writes anything."""
        now = self._clock()
        items = [(lease, tuple(outcomes)) for lease, outcomes in attempts]
        retry = self._retry
        return await self._writer.submit(lambda conn: ops.record_many(conn, items, now, retry))

    async def release(self, lease: Lease, *, retry_at: float | None = None) -> None:
        await self._writer.submit(lambda conn: ops.release(conn, lease, retry_at))

    async def hold(self, message_id: str) -> bool:
        """Put an active message on hold; True if it is (now) held, False if unknown or
        done. A worker already delivering it finishes that one attempt."""
        return await self._writer.submit(lambda conn: ops.set_held(conn, message_id, True))

    async def release_hold(self, message_id: str) -> bool:
        """True if the message was on hold and is active again."""
        return await self._writer.submit(lambda conn: ops.set_held(conn, message_id, False))

    async def retry_now(self, message_id: str | None = None) -> int:
        now = self._clock()
        return await self._writer.submit(lambda conn: ops.retry_now(conn, message_id, now))

    async def reclaim_leases(self) -> int:
        """At relay start: the leases in the file belong to a process that is gone (one
        relay per queue file; `Relay.start` holds a lock file to make sure), so void them
        and deliver those messages now rather than when their leases would expire.
        Not part of QueueStore: a shared store would track lease owners instead."""
        return await self._writer.submit(ops.reclaim_leases)

    async def delete(self, message_id: str) -> bool:
        return await self._writer.submit(lambda conn: ops.delete(conn, message_id))

    async def claim_delay_warning(self, message_id: str) -> bool:
        """True the first time for an active message: the caller warns its sender."""
        return await self._writer.submit(lambda conn: ops.claim_delay_warning(conn, message_id))

    async def expired(
        self,
        now: float,
        max_age: float,
        bounce_max_age: float,
        limit: int,
        lease_seconds: float = 300.0,
    ) -> builtins.list[Lease]:
        """Lease active messages past their lifetime, with all their undelivered
        recipients and the body (for the DSN); record them as bounced."""
        _check_limit(limit, lease_seconds)
        return await self._writer.submit(
            lambda conn: ops.expired(conn, now, max_age, bounce_max_age, limit, lease_seconds)
        )

    async def purge(self, before: float, limit: int = 1000) -> int:
        """Forget up to `limit` done messages created before `before` (epoch seconds);
        returns how many. Not part of QueueStore: the server's housekeeping calls it."""
        _check_limit(limit)
        return await self._writer.submit(lambda conn: ops.purge(conn, before, limit))

    # --- reads (reader thread, one snapshot each) -------------------------------------

    async def get(self, message_id: str, *, with_data: bool = False) -> QueuedMessage | None:
        """A message with all its recipients; `data` only if asked for and the message
        is not done (a done message's body is dropped)."""
        return await self._read(lambda conn: reads.get(conn, message_id, with_data=with_data))

    async def list(self, where: QueueFilter) -> builtins.list[QueuedMessage]:
        """Messages matching every given filter, by id (arrival) order, without bodies."""
        return await self._read(lambda conn: reads.list_messages(conn, where))

    async def counts(self) -> QueueCounts:
        return await self._read(reads.counts)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise QueueError("the queue is not open (call `await store.open()` first)")
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._in_snapshot, fn)

    def _in_snapshot(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._reader_conn is None:
                self._reader_conn = self._connect()
            conn = self._reader_conn
            conn.execute("BEGIN")  # one read transaction: a consistent view across queries
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise QueueError(f"queue database error: {exc}", phase="queue") from exc

    def _close_reader(self) -> None:
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None


def _validated(message: NewMessage) -> tuple[list[str], bytes]:
    if not isinstance(message.sender, str) or _BAD_CHARS.intersection(message.sender):
        raise QueueError(f"bad sender {message.sender!r}: must be a string without CR, LF, NUL")
    if isinstance(message.recipients, str | bytes):
        raise QueueError("recipients must be a list of addresses, not one string")
    recipients: list[str] = []
    seen: set[str] = set()
    for rcpt in message.recipients:
        if not isinstance(rcpt, str) or not rcpt or _BAD_CHARS.intersection(rcpt):
            raise QueueError(
                f"bad recipient {rcpt!r}: must be a non-empty string without CR, LF, NUL"
            )
        if rcpt not in seen:
            seen.add(rcpt)
            recipients.append(rcpt)
    if not recipients:
        raise QueueError("a message needs at least one recipient; nothing was queued")
    if not isinstance(message.data, bytes | bytearray | memoryview):
        raise QueueError(f"message data must be bytes, got {type(message.data).__name__}")
    return recipients, bytes(message.data)


def _check_limit(limit: int, lease_seconds: float = 1.0) -> None:
    if limit < 1:
        raise QueueError(f"limit must be >= 1, got {limit}")
    if not lease_seconds > 0:
        raise QueueError(f"lease_seconds must be > 0, got {lease_seconds}")


if TYPE_CHECKING:

    def _conforms(store: SQLiteQueue) -> QueueStore:
        return store
