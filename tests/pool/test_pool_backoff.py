"""A failing host is not hammered: per-host backoff, fail-fast acquires, one trial at a
time, reset on success."""

from __future__ import annotations

import asyncio
import random

import pytest

from mxpress.errors import ConnectError
from mxpress.pool import Pool
from mxpress.pool.backoff import Backoff
from tests.pool.conftest import FakeClock, PoolFactory, ScriptedOpener, opts

NAME = "mx1.test:25 none"


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


@pytest.fixture
def failing_pool(make_pool: PoolFactory, opener: ScriptedOpener) -> PoolFactory:
    opener.failing.add("mx1.test")

    def make(**kw: object) -> Pool:
        kw.setdefault("rng", NoJitter())
        kw.setdefault("backoff_initial", 1.0)
        return make_pool(**kw)

    return make


async def test_connect_failure_puts_the_host_in_backoff(
    failing_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = failing_pool()
    with pytest.raises(ConnectError, match="connection refused"):
        await pool.acquire(opts())
    clock.advance(0.5)
    with pytest.raises(ConnectError) as info:
        await pool.acquire(opts())
    text = str(info.value)
    assert "mx1.test:25 is in backoff until 1001.000" in text
    assert "0.5 s from now" in text and "after 1 connect failure " in text
    assert "connection refused" in text  # the last error
    assert len(opener.calls) == 1  # fail fast: no second connect
    s = pool.stats[NAME]
    assert (s.connect_failures, s.connecting, s.open) == (1, 0, 0)
    # Meanwhile the next MX host is tried normally.
    assert not (await pool.acquire(opts(host="mx2.test"))).closed


async def test_delay_doubles_up_to_the_maximum_and_success_resets(
    failing_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = failing_pool(backoff_max=3.0)
    expected = [1.0, 2.0, 3.0, 3.0]
    for n, delay in enumerate(expected, start=1):
        with pytest.raises(ConnectError, match="refused"):
            await pool.acquire(opts())
        clock.advance(delay - 0.01)
        with pytest.raises(ConnectError, match=f"after {n} connect failure"):
            await pool.acquire(opts())
        clock.advance(0.01)
    assert len(opener.calls) == len(expected)
    opener.failing.clear()
    session = await pool.acquire(opts())  # the trial succeeds: failures forgotten
    pool.release(session)
    opener.failing.add("mx1.test")
    pool.release(await pool.acquire(opts()))  # idle session reused: no connect
    await pool.acquire(opts())  # reuses the idle one
    with pytest.raises(ConnectError, match="refused"):
        await pool.acquire(opts())  # a second connection fails
    with pytest.raises(ConnectError, match="after 1 connect failure"):
        await pool.acquire(opts(username="bob", password="pw"))  # per host, not per key


async def test_idle_session_is_still_used_while_the_host_is_in_backoff(
    failing_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    opener.failing.clear()
    pool = failing_pool()
    s = await pool.acquire(opts())
    opener.failing.add("mx1.test")
    with pytest.raises(ConnectError, match="refused"):
        await pool.acquire(opts())
    pool.release(s)
    assert await pool.acquire(opts()) is s


async def test_other_port_of_the_same_host_is_not_in_backoff(
    failing_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = failing_pool()
    with pytest.raises(ConnectError):
        await pool.acquire(opts())
    opener.failing.clear()
    assert not (await pool.acquire(opts(port=587))).closed


async def test_only_one_trial_connect_when_the_backoff_ends(
    failing_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = failing_pool()
    with pytest.raises(ConnectError):
        await pool.acquire(opts())
    clock.advance(1.0)
    opener.hang = asyncio.Event()
    opener.started.clear()
    trial = asyncio.create_task(pool.acquire(opts()))
    await opener.started.wait()
    with pytest.raises(ConnectError, match="trial connection is in progress"):
        await pool.acquire(opts())
    assert len(opener.calls) == 2
    opener.hang.set()
    with pytest.raises(ConnectError, match="refused"):
        await trial
    with pytest.raises(ConnectError, match="after 2 connect failures"):
        await pool.acquire(opts())


async def test_parallel_failures_from_one_outage_count_once(
    failing_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    opener.hang = asyncio.Event()
    pool = failing_pool()
    tasks = [asyncio.create_task(pool.acquire(opts())) for _ in range(3)]
    await asyncio.sleep(0)
    assert pool.stats[NAME].connecting == 3
    opener.hang.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectError) for r in results)
    with pytest.raises(ConnectError, match=r"until 1001\.000 .* after 1 connect failure "):
        await pool.acquire(opts())
    assert pool.stats[NAME].connect_failures == 3


async def test_waiters_fail_fast_once_the_host_fails(
    failing_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    opener.failing.clear()
    pool = failing_pool(max_per_destination=1, pool_timeout=5)
    held = await pool.acquire(opts())
    first = asyncio.create_task(pool.acquire(opts()))
    await asyncio.sleep(0)
    second = asyncio.create_task(pool.acquire(opts()))
    await asyncio.sleep(0)
    assert pool.stats[NAME].waiting == 2
    opener.failing.add("mx1.test")
    pool.release(held, reuse=False)  # room for one new connect: it fails
    with pytest.raises(ConnectError, match="refused"):
        await first
    with pytest.raises(ConnectError, match="in backoff"):
        await second
    assert len(opener.calls) == 2


async def test_cancelled_connect_is_not_a_failure(
    failing_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    opener.failing.clear()
    opener.hang = asyncio.Event()
    pool = failing_pool()
    task = asyncio.create_task(pool.acquire(opts()))
    await opener.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = pool.stats[NAME]
    assert (s.connecting, s.connect_failures) == (0, 0)
    opener.hang.set()
    assert not (await pool.acquire(opts())).closed


def test_jitter_only_shortens_the_delay_and_varies(clock: FakeClock) -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, clock=clock, rng=random.Random(7))
    delays = [backoff.delay(n) for n in range(1, 10)]
    for n, d in enumerate(delays, start=1):
        base = min(60.0, 2.0 ** (n - 1))
        assert 0.9 * base <= d <= base
    firsts = {backoff.delay(1) for _ in range(20)}
    assert len(firsts) > 1


def test_backoff_entries_are_pruned_long_after_they_end(clock: FakeClock) -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, clock=clock, rng=NoJitter())
    backoff.failure(("mx.test", 25), ConnectError("refused"), trial=False)
    clock.advance(5)
    backoff.prune()
    assert len(backoff) == 1
    clock.advance(10)
    backoff.prune()
    assert len(backoff) == 0
    backoff.check(("mx.test", 25))  # nothing left to refuse
