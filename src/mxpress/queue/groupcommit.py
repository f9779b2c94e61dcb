"""Group commit: one writer thread, one SQLite connection, one fsync for many writes.

Coroutines hand the writer small functions (`op(conn) -> value`). The thread takes every
request that has arrived (waiting at most `window` seconds for more, up to `max_batch`),
runs them in ONE transaction (if one request fails, the batch runs again with a
SAVEPOINT per request, so that the failure rolls back alone), and commits: with
`synchronous=FULL` that COMMIT is the fsync. Only then is each request's future
resolved, so "the future resolved" means "on disk".

SQLite allows one writer at a time anyway; a single thread owning the connection means
no lock contention inside the process and no event-loop blocking on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mxpress.batch_thread import as_batch_thread
from mxpress.errors import QueueError

T = TypeVar("T")

Connect = Callable[[], sqlite3.Connection]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counters of the writer since `open()`: `commits` is the number of fsyncs that
    made writes durable; `requests / commits` is the group-commit factor."""

    commits: int = 0
    batches: int = 0  # transactions started (a failed COMMIT counts here, not in commits)
    requests: int = 0  # write requests run (enqueue, lease, record, ...)
    failed: int = 0  # requests that raised (rolled back alone)
    max_batch: int = 0  # most requests in one transaction
    skipped: int = 0  # enqueues whose caller was cancelled before they ran


class _Request(Generic[T]):
    __slots__ = ("future", "loop", "op", "skip_if_cancelled")

    def __init__(
        self,
        op: Callable[[sqlite3.Connection], T],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
        skip_if_cancelled: bool,
    ) -> None:
        self.op = op
        self.loop = loop
        self.future = future
        self.skip_if_cancelled = skip_if_cancelled


_STOP = object()
_Outcome = tuple[_Request[Any], Any, BaseException | None]


class GroupCommitWriter:
    """The writer thread. `start()` connects and runs `setup(conn)` in the thread."""

    def __init__(
        self,
        connect: Connect,
        setup: Callable[[sqlite3.Connection], None],
        *,
        window: float,
        max_batch: int,
        name: str = "mxpress-queue-writer",
    ) -> None:
        self._connect = connect
        self._setup = setup
        self._window = window
        self._max_batch = max_batch
        self._name = name
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Guards "closed?" + put, so no request can slip in behind the stop marker.
        self._lock = threading.Lock()
        self._closed = True
        self._worker: threading.Thread | None = None
        self._commits = self._batches = self._count = self._failed = 0
        self._max_seen = self._skipped = 0
        self._last_size = 0  # requests in the last batch collected
        # The window's wait: more requests wanted (0: not waiting), and "they are here".
        self._want = 0
        self._enough = threading.Event()
        self._yield_soon = False  # a turn for the writer is asked of the loop

    @property
    def stats(self) -> QueueStats:
        return QueueStats(
            commits=self._commits,
            batches=self._batches,
            requests=self._count,
            failed=self._failed,
            max_batch=self._max_seen,
            skipped=self._skipped,
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._closed = False
        self._worker = threading.Thread(
            target=self._run, args=(loop, ready), name=self._name, daemon=True
        )
        self._worker.start()
        try:
            await ready
        except BaseException:  # failed to open, or cancelled while it did
            self._closed = True
            self._requests.put(_STOP)  # a thread that did open waits for requests: end it
            await asyncio.to_thread(self._worker.join)
            raise

    async def stop(self) -> None:
        """Finish every request already submitted, then close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._requests.put(_STOP)
        self._enough.set()  # no waiting out a window for company that will not come
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join)

    async def submit(
        self, op: Callable[[sqlite3.Connection], T], *, skip_if_cancelled: bool = False
    ) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise QueueError("the queue is not open (call `await store.open()` first)")
            self._requests.put(_Request(op, loop, future, skip_if_cancelled))
        if self._want and self._requests.qsize() >= self._want:
            self._enough.set()  # the writer waits in its window for this many
            if not self._yield_soon:
                # Its company is complete: let it commit now. A batch thread (see
                # batch_thread.py) woken by the set would wait for this loop to sleep or
                # use up its time slice, and the sessions waiting for this commit with it.
                self._yield_soon = True
                loop.call_soon(self._yield_to_writer)
        return await future

    def _yield_to_writer(self) -> None:
        """After the loop's current callbacks: give the core away (the GIL with it) for
        the writer to take. One turn per completed window at most."""
        self._yield_soon = False
        if hasattr(os, "sched_yield"):  # POSIX
            os.sched_yield()

    # --- the thread ------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        as_batch_thread()  # woken by the loop, it must not take the loop's core (see there)
        try:
            conn = self._connect()
            try:
                self._setup(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException as exc:
            _resolve(loop, [(ready, None, _as_queue_error(exc))])
            return
        _resolve(loop, [(ready, None, None)])
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._collect()
                if batch:
                    self._run_batch(conn, batch)
        finally:
            conn.close()

    def _collect(self) -> tuple[list[_Request[Any]], bool]:
        """Block for one request, then take whatever else is there, up to max_batch.
        Returns (batch, stop seen).

        With a window, and only while writers come in company (the last batch had
        several requests), wait up to the window for as many as the last batch had: many
        concurrent writers then share each fsync instead of a few each (a commit costs
        far more CPU than a request), while a lone writer never waits for nobody. The
        wait is on an event that `submit` sets once enough have come, not on the queue:
        a wake-up per arriving request would cost this thread a turn at the GIL each."""
        first = self._requests.get()
        if first is _STOP:
            return [], True
        batch: list[_Request[Any]] = [first]  # type: ignore[list-item]
        expected = self._last_size if self._window > 0 else 1
        if expected > 1:
            self._enough.clear()
            self._want = expected - 1
            if self._requests.qsize() < self._want:
                self._enough.wait(self._window)
            self._want = 0
        while len(batch) < self._max_batch:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        self._last_size = len(batch)
        return batch, False

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Request[Any]]) -> None:
        runnable: list[_Request[Any]] = []
        for request in batch:
            # Reading a future's state from this thread is a benign race: at worst the
            # enqueue is stored although its caller just went away (at-least-once).
            if request.skip_if_cancelled and request.future.cancelled():
                self._skipped += 1
            else:
                runnable.append(request)
        if not runnable:
            return
        self._batches += 1
        self._count += len(runnable)
        self._max_seen = max(self._max_seen, len(runnable))
        try:
            conn.execute("BEGIN IMMEDIATE")
            done = self._run_all(conn, runnable)
            conn.execute("COMMIT")
        except Exception as exc:
            # The transaction itself failed (busy, disk full, I/O): nothing of it is stored.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _as_queue_error(exc)
            self._failed += len(runnable)
            self._deliver([(r, None, error) for r in runnable])
            return
        self._commits += 1
        self._failed += sum(1 for _, _, exc in done if exc is not None)
        self._deliver(done)

    @staticmethod
    def _run_all(conn: sqlite3.Connection, runnable: list[_Request[Any]]) -> list[_Outcome]:
        """Run the batch inside the open transaction. Optimistically first, without a
        savepoint per request: each statement hands the GIL to the event loop and back,
        and savepoints would double the statements of a typical request. If a request
        fails, everything is rolled back and the batch runs again with a savepoint per
        request, so that the failure is the only thing undone (requests are plain
        functions of the connection, so running one again is safe)."""
        try:
            return [(request, request.op(conn), None) for request in runnable]
        except Exception:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
        return [_run_one(conn, request) for request in runnable]

    @staticmethod
    def _deliver(outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for request, value, exc in outcomes:
            by_loop.setdefault(request.loop, []).append((request.future, value, exc))
        for loop, items in by_loop.items():
            _resolve(loop, items)


def _run_one(conn: sqlite3.Connection, request: _Request[Any]) -> _Outcome:
    """Run one request in its own savepoint. A sqlite3.Error that breaks the savepoint
    itself propagates and fails the whole batch (the transaction is unusable)."""
    conn.execute("SAVEPOINT op")
    try:
        value = request.op(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return request, None, _as_queue_error(exc)
    conn.execute("RELEASE op")
    return request, value, None


def _as_queue_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        error = QueueError(f"queue database error: {exc}", phase="queue")
        error.__cause__ = exc
        return error
    return exc


def _resolve(
    loop: asyncio.AbstractEventLoop,
    items: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
) -> None:
    # One hop into the loop per batch, not one per request.
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_set_results, items)


def _set_results(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, exc in items:
        if future.done():
            continue
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
