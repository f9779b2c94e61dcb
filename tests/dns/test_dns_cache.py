"""DNSCache on its own: TTL clamps, expiry on an injected clock, LRU bounds,
single flight, serve-stale and refresh-ahead, with an in-memory fetch."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from mxpress.dns.cache import Answer, DNSCache, DNSStats
from mxpress.errors import ConfigError, DNSTemporaryError
from tests.dns.dns_helpers import FakeClock


class Upstream:
    """An in-memory fetch: counts calls, can be made slow or failing."""

    def __init__(self, ttl: float = 100.0) -> None:
        self.ttl = ttl
        self.calls: Counter[tuple[str, str]] = Counter()
        self.delay = 0.0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, name: str, rdtype: str) -> Answer:
        self.calls[(name, rdtype)] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise DNSTemporaryError(f"{rdtype} lookup for {name} failed", name=name)
        return Answer(name, rdtype, (f"127.0.0.{self.calls[(name, rdtype)]}",), self.ttl)


async def test_ttl_floor_ceiling_and_expiry(clock: FakeClock) -> None:
    cache = DNSCache(min_ttl=10, max_ttl=100, refresh_ahead=0, clock=clock)
    assert cache.put(Answer("low.test", "A", ("127.0.0.1",), 1)).expires == clock.now + 10
    assert cache.put(Answer("high.test", "A", ("127.0.0.1",), 9999)).expires == clock.now + 100
    assert cache.lookup("high.test", "A") is not None
    clock.advance(99.9)
    assert cache.lookup("high.test", "A") is not None
    clock.advance(0.1)
    assert cache.lookup("high.test", "A") is None
    assert cache.stats.hits == 2


async def test_negative_ttl_clamps_and_counts(clock: FakeClock) -> None:
    cache = DNSCache(min_negative_ttl=2, max_negative_ttl=60, clock=clock)
    entry = cache.put(Answer("nx.test", "MX", (), 3600, "nxdomain"))
    assert entry.expires == clock.now + 60
    stats = DNSStats()
    assert cache.lookup("nx.test", "MX", stats=stats) is entry
    assert (stats.hits, stats.negative_hits) == (0, 1)


async def test_lru_bounds_positive_and_negative_separately() -> None:
    cache = DNSCache(max_entries=3, max_negative=2)
    for i in range(5):
        cache.put(Answer(f"h{i}.test", "A", ("127.0.0.1",), 100))
        cache.put(Answer(f"nx{i}.test", "A", (), 100, "nxdomain"))
        cache.lookup("h0.test", "A")  # keep h0 recently used
    assert len(cache) == 5
    assert cache.peek("h0.test", "A") is not None
    assert [cache.peek(f"h{i}.test", "A") is not None for i in range(1, 5)] == [
        False,
        False,
        True,
        True,
    ]
    assert [cache.peek(f"nx{i}.test", "A") is not None for i in range(5)] == [
        False,
        False,
        False,
        True,
        True,
    ]


async def test_one_fetch_for_many_concurrent_gets() -> None:
    cache = DNSCache()
    upstream = Upstream()
    upstream.delay = 0.01
    stats = DNSStats()
    gets = [cache.get("a.test", "A", upstream, stats) for _ in range(1000)]
    results = await asyncio.gather(*gets)
    assert upstream.calls[("a.test", "A")] == 1
    assert {entry.answer.records for entry, _ in results} == {("127.0.0.1",)}
    assert (stats.misses, stats.joined) == (1, 999)
    assert cache.in_flight() == 0


async def test_cancelled_waiter_does_not_cancel_the_query() -> None:
    cache = DNSCache()
    upstream = Upstream()
    upstream.gate = asyncio.Event()
    first = asyncio.create_task(cache.get("a.test", "A", upstream))
    second = asyncio.create_task(cache.get("a.test", "A", upstream))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    upstream.gate.set()
    entry, from_cache = await second
    assert first.cancelled()
    assert entry.answer.records == ("127.0.0.1",) and not from_cache
    assert upstream.calls[("a.test", "A")] == 1
    assert cache.peek("a.test", "A") is entry


async def test_all_waiters_cancelled_query_still_completes() -> None:
    cache = DNSCache()
    upstream = Upstream()
    upstream.delay = 0.01
    waiter = asyncio.create_task(cache.get("a.test", "A", upstream))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0.05)
    assert cache.peek("a.test", "A") is not None  # the answer was stored anyway


async def test_serve_stale_then_recheck_after_stale_retry(clock: FakeClock) -> None:
    cache = DNSCache(stale_window=300, stale_retry=30, refresh_ahead=0, clock=clock)
    upstream = Upstream(ttl=60)
    stats = DNSStats()
    first, _ = await cache.get("a.test", "A", upstream, stats)
    clock.advance(61)
    upstream.fail = True
    stale, from_cache = await cache.get("a.test", "A", upstream, stats)
    assert stale is first and from_cache
    assert stats.stale_served == 1 and upstream.calls[("a.test", "A")] == 2
    clock.advance(10)  # within stale_retry: served without asking again
    assert (await cache.get("a.test", "A", upstream, stats))[0] is first
    assert upstream.calls[("a.test", "A")] == 2 and stats.stale_served == 2
    clock.advance(25)  # stale_retry passed: ask again; recovered upstream wins
    upstream.fail = False
    fresh, from_cache = await cache.get("a.test", "A", upstream, stats)
    assert fresh.answer.records == ("127.0.0.3",) and not from_cache


async def test_no_stale_past_the_window(clock: FakeClock) -> None:
    cache = DNSCache(stale_window=100, refresh_ahead=0, clock=clock)
    upstream = Upstream(ttl=60)
    await cache.get("a.test", "A", upstream)
    clock.advance(60 + 100)
    upstream.fail = True
    with pytest.raises(DNSTemporaryError):
        await cache.get("a.test", "A", upstream)
    assert cache.peek("a.test", "A") is None


async def test_refresh_ahead_in_background(clock: FakeClock) -> None:
    cache = DNSCache(refresh_ahead=0.2, clock=clock)
    upstream = Upstream(ttl=100)
    stats = DNSStats()
    await cache.get("a.test", "A", upstream, stats)
    clock.advance(79)  # 21 % of the TTL left: no refresh yet
    assert cache.lookup("a.test", "A", upstream, stats) is not None
    assert cache.in_flight() == 0
    clock.advance(2)  # 19 % left: served from cache, refreshed behind
    entry = cache.lookup("a.test", "A", upstream, stats)
    assert entry is not None and entry.answer.records == ("127.0.0.1",)
    assert cache.in_flight() == 1 and stats.refreshes == 1
    cache.lookup("a.test", "A", upstream, stats)  # no second refresh while one runs
    await asyncio.sleep(0.01)
    refreshed = cache.peek("a.test", "A")
    assert refreshed is not None and refreshed.answer.records == ("127.0.0.2",)
    assert refreshed.expires == clock.now + 100
    assert upstream.calls[("a.test", "A")] == 2 and stats.misses == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_entries": 0},
        {"min_ttl": -1},
        {"min_ttl": 10, "max_ttl": 5},
        {"refresh_ahead": 1.0},
        {"stale_window": float("nan")},
    ],
)
def test_cache_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        DNSCache(**kwargs)  # type: ignore[arg-type]
