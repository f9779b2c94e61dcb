"""The in-process DNS cache: TTLs, LRU bound, negative caching, one query in flight.

One `DNSCache` object is meant to be shared by every resolver, pool and worker of
a process (pass it in; there is no module-level cache). It is used from one
event loop; a lookup from another loop never joins a query of the first.

Semantics, in the order a lookup meets them:

- fresh entry: served (a *hit*, or a *negative hit* for NXDOMAIN/NODATA). An
  entry used in the last `refresh_ahead` fraction of its TTL starts a
  background refresh, so hot names never pay a miss.
- expired entry within `stale_window`: the upstream is asked; if it fails with a
  temporary error, the expired entry is served instead (RFC 8767 serve-stale),
  and for `stale_retry` seconds it is served without asking again.
- otherwise a *miss*: one upstream query per key; concurrent lookups *join* it.
  A cancelled waiter does not cancel the query for the others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Literal

from mxpress.dns.mx import MXRecord
from mxpress.errors import ConfigError, DNSTemporaryError

Negative = Literal["nxdomain", "nodata"]
Key = tuple[str, str]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the upstream said about (name, rdtype), independent of dnspython.

    `records` holds address strings for A/AAAA and `MXRecord`s for MX. `ttl` is
    the smallest TTL of the answer chain (CNAMEs included) or, for a negative
    answer, the RFC 2308 negative TTL (min of the SOA TTL and SOA minimum).
    """

    name: str
    rdtype: str
    records: tuple[str, ...] | tuple[MXRecord, ...]
    ttl: float
    negative: Negative | None = None


@dataclass(slots=True)
class Entry:
    answer: Answer
    stored: float
    expires: float
    refresh_at: float
    # After a failed refresh, serve this stale entry without asking until then.
    retry_after: float = 0.0


@dataclass(slots=True)
class DNSStats:
    """Counters of one resolver, per (name, type) lookup rather than per mx() call.

    `joined` also counts mx() calls that joined a resolution of the same domain.
    """

    hits: int = 0
    misses: int = 0
    negative_hits: int = 0
    stale_served: int = 0
    joined: int = 0
    upstream_queries: int = 0
    errors: int = 0
    refreshes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


Fetch = Callable[[str, str], Awaitable[Answer]]


def _check(name: str, value: float, low: float = 0.0) -> float:
    if not (isinstance(value, int | float) and value >= low and not math.isnan(value)):
        raise ConfigError(f"DNS cache setting {name}={value!r} must be a number >= {low}")
    return float(value)


class DNSCache:
    """Bounded TTL cache of DNS answers keyed by (name, rdtype)."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_negative: int = 2_000,
        min_ttl: float = 5.0,
        max_ttl: float = 86_400.0,
        min_negative_ttl: float = 5.0,
        max_negative_ttl: float = 3_600.0,
        stale_window: float = 86_400.0,
        stale_retry: float = 30.0,
        refresh_ahead: float = 0.1,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_negative < 1:
            raise ConfigError("DNS cache sizes max_entries and max_negative must be >= 1")
        self.max_entries = max_entries
        self.max_negative = max_negative
        self.min_ttl = _check("min_ttl", min_ttl)
        self.max_ttl = _check("max_ttl", max_ttl, self.min_ttl)
        self.min_negative_ttl = _check("min_negative_ttl", min_negative_ttl)
        self.max_negative_ttl = _check("max_negative_ttl", max_negative_ttl, self.min_negative_ttl)
        self.stale_window = _check("stale_window", stale_window)
        self.stale_retry = _check("stale_retry", stale_retry)
        self.refresh_ahead = _check("refresh_ahead", refresh_ahead)
        if self.refresh_ahead >= 1:
            raise ConfigError("DNS cache refresh_ahead is a fraction of the TTL: use 0 <= x < 1")
        self.clock = clock
        self.stats = DNSStats()  # used when a caller brings no stats of its own
        self._pos: OrderedDict[Key, Entry] = OrderedDict()
        self._neg: OrderedDict[Key, Entry] = OrderedDict()
        self._inflight: dict[Key, asyncio.Task[Entry]] = {}

    def __len__(self) -> int:
        return len(self._pos) + len(self._neg)

    def clear(self) -> None:
        self._pos.clear()
        self._neg.clear()

    def invalidate(self, name: str, rdtype: str) -> None:
        self._pos.pop((name, rdtype), None)
        self._neg.pop((name, rdtype), None)

    def peek(self, name: str, rdtype: str) -> Entry | None:
        """The stored entry, fresh or not, without counting or reordering."""
        key = (name, rdtype)
        return self._pos.get(key) or self._neg.get(key)

    def in_flight(self) -> int:
        return len(self._inflight)

    def put(self, answer: Answer) -> Entry:
        """Store an answer under (answer.name, answer.rdtype) with its clamped TTL."""
        now = self.clock()
        key = (answer.name, answer.rdtype)
        if answer.negative:
            ttl = min(max(answer.ttl, self.min_negative_ttl), self.max_negative_ttl)
            table, other, cap = self._neg, self._pos, self.max_negative
        else:
            ttl = min(max(answer.ttl, self.min_ttl), self.max_ttl)
            table, other, cap = self._pos, self._neg, self.max_entries
        # Negative entries are refreshed too: an IPv4-only host's NODATA for AAAA
        # is as hot as its A record.
        refresh_at = now + ttl * (1.0 - self.refresh_ahead) if self.refresh_ahead else math.inf
        entry = Entry(answer, now, now + ttl, refresh_at)
        other.pop(key, None)
        table[key] = entry
        table.move_to_end(key)
        while len(table) > cap:
            table.popitem(last=False)
        return entry

    def lookup(
        self, name: str, rdtype: str, fetch: Fetch | None = None, stats: DNSStats | None = None
    ) -> Entry | None:
        """A fresh entry, or None. Synchronous: this is the hot path of a warm send.

        With `fetch`, an entry close to expiry is refreshed in the background.
        """
        key = (name, rdtype)
        table = self._pos
        entry = table.get(key)
        if entry is None:
            table = self._neg
            entry = table.get(key)
            if entry is None:
                return None
        now = self.clock()
        if now >= entry.expires:
            return None
        st = stats or self.stats
        if entry.answer.negative:
            st.negative_hits += 1
        else:
            st.hits += 1
        table.move_to_end(key)
        if now >= entry.refresh_at and fetch is not None and key not in self._inflight:
            try:
                self._start(key, fetch)
            except RuntimeError:  # no running loop: a sync caller simply gets the entry
                pass
            else:
                st.refreshes += 1
        return entry

    async def get(
        self, name: str, rdtype: str, fetch: Fetch, stats: DNSStats | None = None
    ) -> tuple[Entry, bool]:
        """The entry for (name, rdtype), asking upstream when needed.

        Returns (entry, from_cache). Raises what `fetch` raises when there is
        nothing stale to serve instead.
        """
        entry = self.lookup(name, rdtype, fetch, stats)
        if entry is not None:
            return entry, True
        return await self.load(name, rdtype, fetch, stats)

    async def load(
        self, name: str, rdtype: str, fetch: Fetch, stats: DNSStats | None = None
    ) -> tuple[Entry, bool]:
        """The slow half of `get`, for callers that already tried `lookup`."""
        st = stats or self.stats
        key = (name, rdtype)
        now = self.clock()
        stale = self._pos.get(key) or self._neg.get(key)
        if stale is not None:
            if now < stale.expires:  # stored since the caller's lookup
                return stale, True
            if now >= stale.expires + self.stale_window:
                self.invalidate(name, rdtype)
                stale = None
            elif now < stale.retry_after:
                st.stale_served += 1
                return stale, True
        loop = asyncio.get_running_loop()
        task = self._inflight.get(key)
        if task is None:
            task = self._start(key, fetch)
            st.misses += 1
        elif task.get_loop() is not loop:  # a query of another loop cannot be awaited here
            st.misses += 1
            return self.put(await fetch(name, rdtype)), False
        else:
            st.joined += 1
        try:
            # shield: a cancelled waiter must not cancel the query the others wait for.
            return await asyncio.shield(task), False
        except DNSTemporaryError:
            if stale is None:
                raise
            stale.retry_after = self.clock() + self.stale_retry
            st.stale_served += 1
            return stale, True

    def _start(self, key: Key, fetch: Fetch) -> asyncio.Task[Entry]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._fetch_and_store(key, fetch))
        self._inflight[key] = task
        task.add_done_callback(partial(self._done, key))
        return task

    async def _fetch_and_store(self, key: Key, fetch: Fetch) -> Entry:
        answer = await fetch(*key)
        return self.put(answer)

    def _done(self, key: Key, task: asyncio.Task[Entry]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so a query nobody awaits logs no warning
