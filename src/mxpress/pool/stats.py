"""Pool statistics: snapshots per destination, and why sessions were closed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class CloseReason(StrEnum):
    """Why the pool closed a session (the keys of `DestinationStats.closed`)."""

    IDLE = "idle"  # idle longer than idle_timeout
    AGE = "age"  # older than max_session_age
    MAX_MESSAGES = "max_messages"  # sent max_messages_per_session
    STALE = "stale"  # the server closed it or spoke unasked while it was idle
    NOOP_FAILED = "noop_failed"  # the liveness NOOP failed
    BROKEN = "broken"  # came back closed (421, disconnect, timeout mid-transaction)
    ERROR = "error"  # an exception left the `async with pool.session()` block
    CANCELLED = "cancelled"  # the task using it was cancelled
    DISCARDED = "discarded"  # released with reuse=False
    EVICTED = "evicted"  # closed to make room for another destination (global limit)
    POOL_CLOSED = "pool_closed"  # the pool was closed


# Reasons where the session is healthy and the server deserves a QUIT.
POLITE_REASONS = frozenset(
    {
        CloseReason.IDLE,
        CloseReason.AGE,
        CloseReason.MAX_MESSAGES,
        CloseReason.DISCARDED,
        CloseReason.EVICTED,
        CloseReason.POOL_CLOSED,
    }
)


@dataclass(slots=True)
class Counters:
    """Running totals of one destination (mutable, owned by the pool)."""

    created: int = 0
    reused: int = 0
    connect_failures: int = 0
    closed: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counters) -> None:
        self.created += other.created
        self.reused += other.reused
        self.connect_failures += other.connect_failures
        self.closed.update(other.closed)


@dataclass(frozen=True, slots=True)
class DestinationStats:
    """A snapshot of one destination (or of the whole pool, for `PoolStats.total`).

    active: checked out (including a liveness NOOP in progress); idle: pooled, ready;
    connecting: connects in progress (they count against the limits); waiting: acquirers
    queued for a session; created/reused: sessions opened / idle sessions handed out again;
    connect_failures: failed opens; closed: reason -> count.
    """

    active: int = 0
    idle: int = 0
    connecting: int = 0
    waiting: int = 0
    created: int = 0
    reused: int = 0
    connect_failures: int = 0
    closed: Mapping[str, int] = field(default_factory=dict)

    @property
    def open(self) -> int:
        """Connections held against the limits: active + idle + connecting."""
        return self.active + self.idle + self.connecting

    def compact(self) -> str:
        text = (
            f"active={self.active} idle={self.idle} connecting={self.connecting} "
            f"waiting={self.waiting} created={self.created} reused={self.reused}"
        )
        if self.connect_failures:
            text += f" connect_failures={self.connect_failures}"
        if self.closed:
            reasons = ",".join(f"{k}:{v}" for k, v in sorted(self.closed.items()))
            text += f" closed={{{reasons}}}"
        return text


def summed(parts: Iterable[DestinationStats], base: Counters) -> DestinationStats:
    """Totals over destinations, plus the counters of destinations already forgotten."""
    active = idle = connecting = waiting = 0
    counters = Counters()
    counters.add(base)
    for s in parts:
        active += s.active
        idle += s.idle
        connecting += s.connecting
        waiting += s.waiting
        counters.created += s.created
        counters.reused += s.reused
        counters.connect_failures += s.connect_failures
        counters.closed.update(s.closed)
    return DestinationStats(
        active=active,
        idle=idle,
        connecting=connecting,
        waiting=waiting,
        created=counters.created,
        reused=counters.reused,
        connect_failures=counters.connect_failures,
        closed=dict(counters.closed),
    )


class PoolStats(Mapping[str, DestinationStats]):
    """Destination name ("host:port tls user") -> its stats; `total` sums them all."""

    __slots__ = ("_by_name", "total")

    def __init__(self, by_name: dict[str, DestinationStats], total: DestinationStats) -> None:
        self._by_name = by_name
        self.total = total

    def __getitem__(self, name: str) -> DestinationStats:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        lines = [f"total: {self.total.compact()}"]
        lines += [f"{name}: {s.compact()}" for name, s in self._by_name.items()]
        return "<PoolStats " + "; ".join(lines) + ">"
