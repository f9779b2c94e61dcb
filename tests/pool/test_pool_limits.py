"""Per-destination and global limits, connects in progress, FIFO waiters, eviction,
and what PoolTimeout says."""

from __future__ import annotations

import asyncio

import pytest

from mxpress.client.session import Session
from mxpress.errors import PoolTimeout
from mxpress.pool import Pool
from tests.pool.conftest import PoolFactory, ScriptedOpener, opts

NAME = "mx1.test:25 none"


async def settle() -> None:
    """Let every ready task run up to its next real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_per_destination_limit_times_out_with_the_numbers(make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_destination=2, pool_timeout=0.02)
    secret = opts(username="alice", password="s3cret")
    await pool.acquire(secret)
    await pool.acquire(secret)
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire(secret)
    text = str(info.value)
    assert "mx1.test:25" in text
    assert "2 active + 0 connecting + 0 idle of 2 allowed per destination" in text
    assert "within 0.0" in text  # waited seconds
    assert "s3cret" not in text
    assert info.value.host == "mx1.test:25"
    assert pool.stats[f"{NAME} alice"].waiting == 0  # the timed-out waiter is gone
    # Another destination is not held back by mx1's limit.
    assert isinstance(await pool.acquire(opts(host="mx2.test")), Session)


async def test_global_limit(make_pool: PoolFactory) -> None:
    pool = make_pool(max_connections=2, pool_timeout=0.02)
    await pool.acquire(opts(host="a.test"))
    await pool.acquire(opts(host="b.test"))
    with pytest.raises(PoolTimeout, match="2 of 2 open in the pool"):
        await pool.acquire(opts(host="c.test"))
    assert pool.stats.total.open == 2


async def test_connect_in_progress_counts_against_the_limits(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool(max_per_destination=1, max_connections=2, pool_timeout=0.02)
    opener.hang = asyncio.Event()
    first = asyncio.create_task(pool.acquire(opts()))
    await opener.started.wait()
    assert pool.stats[NAME].connecting == 1 and pool.stats[NAME].active == 0
    with pytest.raises(PoolTimeout, match="0 active \\+ 1 connecting"):
        await pool.acquire(opts())
    second = asyncio.create_task(pool.acquire(opts(host="mx2.test")))
    await settle()
    assert pool.stats.total.connecting == 2
    with pytest.raises(PoolTimeout, match="2 of 2 open in the pool"):
        await pool.acquire(opts(host="mx3.test"))
    opener.hang.set()
    session = await first
    await second
    s = pool.stats[NAME]
    assert (s.connecting, s.active, s.created) == (0, 1, 1)
    assert not session.closed


async def test_waiters_are_served_first_come_first_served(make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    held = await pool.acquire(opts())
    order: list[int] = []

    async def use(n: int) -> None:
        session = await pool.acquire(opts())
        order.append(n)
        await asyncio.sleep(0)
        pool.release(session)

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(use(n)))
        await settle()
    assert pool.stats[NAME].waiting == 4
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    s = pool.stats[NAME]
    assert (s.created, s.reused, s.waiting, s.idle) == (1, 4, 0, 1)


async def test_a_newcomer_does_not_jump_the_queue(make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    held = await pool.acquire(opts())
    early = asyncio.create_task(pool.acquire(opts()))
    await settle()
    pool.release(held)  # handed straight to `early`, which has not run yet
    assert pool.stats[NAME].idle == 0 and pool.stats[NAME].active == 1
    late = asyncio.create_task(pool.acquire(opts()))
    await settle()
    assert early.done() and await early is held
    assert not late.done() and pool.stats[NAME].waiting == 1
    pool.release(held)
    assert await late is held


async def test_global_limit_evicts_an_idle_session_of_another_destination(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool(max_connections=2)
    old = await pool.acquire(opts(host="a.test"))
    newer = await pool.acquire(opts(host="b.test"))
    pool.release(old)
    pool.release(newer)
    c = await pool.acquire(opts(host="c.test"))  # full: the least recently used goes
    await pool.reap()
    assert old.closed and opener.server(old).commands[-1] == "QUIT"
    assert not newer.closed and not c.closed
    assert pool.stats["a.test:25 none"].closed == {"evicted": 1}
    assert pool.stats.total.open == 2


async def test_a_waiter_blocked_by_the_global_limit_gets_room_on_release(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(max_connections=1, pool_timeout=5)
    a = await pool.acquire(opts(host="a.test"))
    b_task = asyncio.create_task(pool.acquire(opts(host="b.test")))
    await settle()
    assert pool.stats["b.test:25 none"].waiting == 1
    pool.release(a)  # idle for a.test, but b.test is waiting: evict it, open for b
    b = await b_task
    assert a.closed and not b.closed
    assert pool.stats["a.test:25 none"].closed == {"evicted": 1}
    assert pool.stats.total.open == 1


async def test_fifo_holds_across_destinations(make_pool: PoolFactory) -> None:
    pool = make_pool(max_connections=1, pool_timeout=5)
    a = await pool.acquire(opts(host="a.test"))
    first = asyncio.create_task(pool.acquire(opts(host="b.test")))
    await settle()
    second = asyncio.create_task(pool.acquire(opts(host="a.test")))
    await settle()
    pool.release(a)  # the b.test waiter came first: it gets the room
    b = await first
    await settle()
    assert not second.done()
    pool.release(b)
    assert await second is not a  # a was evicted for b; a.test gets a new session
    assert pool.stats.total.created == 3


async def test_limits_hold_under_concurrent_load(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool: Pool = make_pool(max_per_destination=2, max_connections=3, pool_timeout=5)
    in_use: set[Session] = set()
    peak = 0

    async def worker(i: int) -> None:
        nonlocal peak
        for _ in range(5):
            async with pool.session(opts(host=f"h{i % 3}.test")) as s:
                assert s not in in_use  # never handed to two tasks at once
                in_use.add(s)
                total = pool.stats.total
                peak = max(peak, total.open)
                assert total.open <= 3
                assert all(d.open <= 2 for d in pool.stats.values())
                await asyncio.sleep(0)
                in_use.discard(s)

    await asyncio.gather(*(worker(i) for i in range(12)))
    assert peak == 3
    total = pool.stats.total
    assert (total.active, total.connecting, total.waiting) == (0, 0, 0)
    assert total.created + total.reused == 60
    live = [s for s in opener.links if not s.closed]
    assert len(live) == total.idle
