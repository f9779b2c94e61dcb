"""ShardedQueue: one view over every worker's queue file in a data directory.

With several worker processes, each owns one SQLite queue file (a shard): worker 0
`queue.sqlite3`, worker i `queue.{i}.sqlite3`. A worker delivers only from its own shard,
but the HTTP API and the `mxpress queue` CLI must see the whole queue, wherever a message
landed. This view opens the other shards as ordinary `SQLiteQueue`s (another process on
the same file is safe: WAL plus a busy timeout) and merges their answers. Ids are unique
across shards in practice and sort by arrival (see `IdGenerator`), so a merged listing
pages by id exactly like one file does.

Shards are found again on every call that needs all of them: a worker started after the
view opened has its file seen by the next call.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import itertools
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mxpress.errors import ConfigError, QueueError
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.sqlite import SQLiteQueue
from mxpress.queue.store import NewMessage, QueueCounts, QueuedMessage, QueueFilter

_SHARD_NAME = re.compile(r"queue(?:\.([1-9][0-9]*))?\.sqlite3")


def shard_path(data_dir: Path, worker: int) -> Path:
    """The queue file of `worker`: queue.sqlite3 for worker 0, queue.{i}.sqlite3 else."""
    if worker < 0:
        raise ConfigError(f"worker must be >= 0, got {worker!r}")
    return data_dir / ("queue.sqlite3" if worker == 0 else f"queue.{worker}.sqlite3")


def shard_paths(data_dir: Path) -> list[Path]:
    """The shard files that exist in `data_dir`, worker 0 first, then by worker number.
    Anything else (-wal/-shm files, queue.x.sqlite3, a missing directory) is ignored."""
    return [path for _, path in shards(data_dir)]


def shards(data_dir: Path) -> list[tuple[int, Path]]:
    """(worker, path) of every shard file in `data_dir`, by worker number."""
    try:
        entries = list(data_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found: list[tuple[int, Path]] = []
    for path in entries:
        match = _SHARD_NAME.fullmatch(path.name)
        if match is not None and path.is_file():
            found.append((int(match[1] or 0), path))
    return sorted(found)


class ShardedQueue:
    """The read and operator side of `QueueStore` over every shard of `data_dir`.

    own: the calling worker's store, already open; the view never opens or closes it, and
        `enqueue` goes there. None (the CLI): the view opens every shard itself, and
        `enqueue` goes to worker 0's file.
    create: with own=None, make worker 0's file (and the directory) at `open()` if it is
        missing; False (the CLI) fails on a data directory without any shard instead.
    clock, retry: for the shards the view opens, as for `SQLiteQueue`.

    `open()` is optional: every call opens the shards it needs. `close()` closes only the
    shards the view opened.
    """

    def __init__(
        self,
        data_dir: Path,
        own: SQLiteQueue | None = None,
        *,
        create: bool = False,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._data_dir = Path(data_dir)
        self._own = own
        self._create = create
        self._clock = clock
        self._retry = retry
        self._opened: dict[Path, SQLiteQueue] = {}  # by shard_paths() path
        self._opening = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Make worker 0's file if asked to (`create`), and with own=None open every
        shard now: QueueError if there is none."""
        if self._own is None:
            try:
                if self._create:
                    await self._shard(shard_path(self._data_dir, 0), create=True)
                await self._shards()
            except BaseException:
                await self.close()  # the shards opened before the failure
                raise

    async def close(self) -> None:
        opened = list(self._opened.values())
        self._opened.clear()
        for store in opened:
            await store.close()

    async def __aenter__(self) -> ShardedQueue:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the QueueStore methods ------------------------------------------------------

    async def enqueue(self, message: NewMessage) -> str:
        """Into `own`, or with own=None into worker 0's file."""
        if self._own is not None:
            return await self._own.enqueue(message)
        store = await self._shard(shard_path(self._data_dir, 0), create=self._create)
        return await store.enqueue(message)

    async def get(self, message_id: str, *, with_data: bool = False) -> QueuedMessage | None:
        for store in await self._shards():
            message = await store.get(message_id, with_data=with_data)
            if message is not None:
                return message
        return None

    async def list(self, where: QueueFilter) -> builtins.list[QueuedMessage]:
        """Each shard's first `where.limit` matches, merged by id: the first `limit` of
        all of them (a page ends at the same id as it would in one file)."""
        pages = await asyncio.gather(*(store.list(where) for store in await self._shards()))
        merged = heapq.merge(*pages, key=lambda message: message.id)
        return builtins.list(itertools.islice(merged, where.limit))

    async def counts(self) -> QueueCounts:
        every = await asyncio.gather(*(store.counts() for store in await self._shards()))
        return QueueCounts(
            messages=_summed(counts.messages for counts in every),
            recipients=_summed(counts.recipients for counts in every),
        )

    async def hold(self, message_id: str) -> bool:
        store = await self._owner(message_id)
        return store is not None and await store.hold(message_id)

    async def release_hold(self, message_id: str) -> bool:
        store = await self._owner(message_id)
        return store is not None and await store.release_hold(message_id)

    async def delete(self, message_id: str) -> bool:
        store = await self._owner(message_id)
        return store is not None and await store.delete(message_id)

    async def retry_now(self, message_id: str | None = None) -> int:
        """Make deferred recipients due now: of one message, or in every shard."""
        if message_id is None:
            return sum(await asyncio.gather(*(s.retry_now() for s in await self._shards())))
        store = await self._owner(message_id)
        return 0 if store is None else await store.retry_now(message_id)

    # --- shards ----------------------------------------------------------------------

    async def _owner(self, message_id: str) -> SQLiteQueue | None:
        """The shard that has the message (found by a read: no write transaction on
        the shards that do not have it)."""
        for store in await self._shards():
            if await store.get(message_id) is not None:
                return store
        return None

    async def _shards(self) -> builtins.list[SQLiteQueue]:
        """Every shard, `own` first, opening the ones not seen before."""
        paths = await asyncio.to_thread(self._other_paths)
        stores = [] if self._own is None else [self._own]
        for path in paths:
            stores.append(await self._shard(path, create=False))
        if not stores:
            raise QueueError(
                f"no queue database at {shard_path(self._data_dir, 0)} "
                "nor any queue.N.sqlite3 (wrong --data-dir?)"
            )
        return stores

    def _other_paths(self) -> builtins.list[Path]:
        """shard_paths() without own's file (in a thread: it touches the disk)."""
        paths = shard_paths(self._data_dir)
        if self._own is None:
            return paths
        own = self._own.path.resolve()
        return [path for path in paths if path.resolve() != own]

    async def _shard(self, path: Path, *, create: bool) -> SQLiteQueue:
        async with self._opening:  # two concurrent calls must not open one file twice
            store = self._opened.get(path)
            if store is None:
                store = SQLiteQueue(path, create=create, clock=self._clock, retry=self._retry)
                await store.open()
                self._opened[path] = store
            return store


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counts:
        for state, n in one.items():
            total[state] = total.get(state, 0) + n
    return total
