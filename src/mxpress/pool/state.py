"""The pool's bookkeeping: pooled sessions, waiters, per-destination state, and the
`Ledger` that moves them between states while keeping every counter true.

No rules here (which session to reuse, when to close one): those live in `pool.py`.
"""

from __future__ import annotations

import asyncio
import itertools
from bisect import insort
from dataclasses import dataclass, field

from mxpress.client.session import Session
from mxpress.pool.key import DestinationKey
from mxpress.pool.stats import CloseReason, Counters, DestinationStats, PoolStats, summed


@dataclass(eq=False, slots=True)
class Entry:
    """One session owned by the pool. Times are on the pool's clock (the session's own
    timestamps may come from another clock, so they are not compared with ours)."""

    session: Session
    dest: Destination
    created_at: float
    idle_since: float


class Slot:
    """A grant to open one new connection (already counted as connecting)."""

    __slots__ = ()


SLOT = Slot()
Grant = Entry | Slot


@dataclass(eq=False, slots=True)
class Waiter:
    """An acquire in progress. `seq` orders waiters FIFO and survives re-queueing (a waiter
    whose granted session failed its NOOP goes back to its place, not to the end)."""

    seq: int
    dest: Destination
    future: asyncio.Future[Grant]


@dataclass(eq=False, slots=True)
class Destination:
    """Everything the pool holds for one `DestinationKey`."""

    key: DestinationKey
    name: str
    # Insertion order is release order: the last item is the most recently used.
    idle: dict[Entry, None] = field(default_factory=dict)
    active: int = 0
    connecting: int = 0
    waiting: int = 0
    counters: Counters = field(default_factory=Counters)
    last_activity: float = 0.0

    @property
    def open(self) -> int:
        return self.active + len(self.idle) + self.connecting

    @property
    def empty(self) -> bool:
        return not self.open and not self.waiting

    def snapshot(self) -> DestinationStats:
        c = self.counters
        return DestinationStats(
            active=self.active,
            idle=len(self.idle),
            connecting=self.connecting,
            waiting=self.waiting,
            created=c.created,
            reused=c.reused,
            connect_failures=c.connect_failures,
            closed=dict(c.closed),
        )


class Ledger:
    """Where every session and waiter of a pool is.

    A session is leased (active), idle, or gone; a new connection is counted as
    connecting from the moment room is granted for it until it is open or has failed.
    `total` is active + idle + connecting over all destinations.
    """

    def __init__(self) -> None:
        self.dests: dict[DestinationKey, Destination] = {}
        self.leased: dict[Session, Entry] = {}
        self.idle_lru: dict[Entry, None] = {}  # all destinations, least recently used first
        self.waiters: list[Waiter] = []  # sorted by seq: FIFO across destinations
        self.total = 0
        self._names: dict[str, DestinationKey] = {}
        self._forgotten = Counters()  # counters of pruned destinations, for the totals

    def destination(self, key: DestinationKey, now: float) -> Destination:
        dest = self.dests.get(key)
        if dest is None:
            name = key.name
            # Keys that differ only in what the name leaves out (a password, a CA file)
            # still get distinct names, so stats never merge two pools.
            for n in itertools.count(2):
                if self._names.get(name, key) == key:
                    break
                name = f"{key.name} #{n}"
            self._names[name] = key
            dest = self.dests[key] = Destination(key, name, last_activity=now)
        return dest

    def enqueue(self, waiter: Waiter) -> None:
        insort(self.waiters, waiter, key=_by_seq)
        waiter.dest.waiting += 1

    def dequeue(self, waiter: Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return  # already served or removed
        waiter.dest.waiting -= 1

    def reserve(self, dest: Destination) -> Slot:
        dest.connecting += 1
        self.total += 1
        return SLOT

    def unreserve(self, dest: Destination) -> None:
        dest.connecting -= 1
        self.total -= 1

    def opened(self, dest: Destination, session: Session, now: float) -> Entry:
        """A reserved connect succeeded: the slot becomes a leased session."""
        dest.connecting -= 1
        dest.counters.created += 1
        entry = Entry(session, dest, created_at=now, idle_since=now)
        self.lease(entry)
        return entry

    def lease(self, entry: Entry) -> None:
        entry.dest.active += 1
        self.leased[entry.session] = entry

    def unlease(self, session: Session) -> Entry:
        entry = self.leased.pop(session)
        entry.dest.active -= 1
        return entry

    def to_idle(self, entry: Entry) -> None:
        entry.dest.idle[entry] = None
        self.idle_lru[entry] = None

    def detach_idle(self, entry: Entry) -> None:
        del entry.dest.idle[entry]
        del self.idle_lru[entry]

    def gone(self, entry: Entry, reason: CloseReason, now: float) -> None:
        """A session that is neither leased nor idle any more is closed for `reason`."""
        self.total -= 1
        entry.dest.counters.closed[reason.value] += 1
        entry.dest.last_activity = now

    def prune(self, now: float, unused_for: float) -> None:
        """Forget destinations with nothing in them for `unused_for` seconds (their
        counters move to the totals)."""
        for key, dest in list(self.dests.items()):
            if dest.empty and now - dest.last_activity > unused_for:
                del self.dests[key]
                del self._names[dest.name]
                self._forgotten.add(dest.counters)

    def stats(self) -> PoolStats:
        by_name = {d.name: d.snapshot() for d in self.dests.values()}
        return PoolStats(by_name, summed(by_name.values(), self._forgotten))


def _by_seq(waiter: Waiter) -> int:
    return waiter.seq
