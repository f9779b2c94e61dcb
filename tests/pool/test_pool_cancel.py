"""Cancellation safety: a cancelled acquire or send never leaks a session, and a session
interrupted mid-transaction never goes back into the pool."""

from __future__ import annotations

import asyncio
import random

import pytest

from mxpress.client.session import Session
from mxpress.errors import MxpressError
from tests.pool.conftest import MSG, FakeClock, PoolFactory, ScriptedOpener, opts

NAME = "mx1.test:25 none"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_cancelled_waiter_is_removed(make_pool: PoolFactory) -> None:
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    held = await pool.acquire(opts())
    waiter = asyncio.create_task(pool.acquire(opts()))
    await settle()
    assert pool.stats[NAME].waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats[NAME].waiting == 0
    pool.release(held)
    s = pool.stats[NAME]
    assert (s.idle, s.active) == (1, 0)


async def test_session_granted_to_a_waiter_cancelled_at_that_moment_goes_back(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    held = await pool.acquire(opts())
    waiter = asyncio.create_task(pool.acquire(opts()))
    await settle()
    pool.release(held)  # granted to the waiter, which has not run yet...
    waiter.cancel()  # ...and is cancelled before it can take it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    s = pool.stats[NAME]
    assert (s.idle, s.active, s.waiting, s.reused) == (1, 0, 0, 0)
    assert await pool.acquire(opts()) is held


async def test_connect_room_granted_to_a_cancelled_waiter_is_freed(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    held = await pool.acquire(opts())
    waiter = asyncio.create_task(pool.acquire(opts()))
    await settle()
    pool.release(held, reuse=False)  # room for a new connect, granted to the waiter
    assert pool.stats[NAME].connecting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats[NAME].open == 0
    assert len(opener.calls) == 1  # the cancelled waiter never connected


async def test_cancel_mid_transaction_closes_the_session(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    used: list[Session] = []

    async def send() -> None:
        async with pool.session(opts()) as s:
            used.append(s)
            stream = opener.stream(s)
            stream.hold = asyncio.Event()  # the server is slow to answer
            stream.reading.clear()
            await s.send("a@x.test", "b@y.test", MSG)

    task = asyncio.create_task(send())
    await settle()
    (session,) = used
    await opener.stream(session).reading.wait()
    assert opener.server(session).commands[-1] == "DATA"  # the transaction is open
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.closed  # the Session closed itself; the pool retired it
    assert "QUIT" not in opener.server(session).commands
    s = pool.stats[NAME]
    assert (s.active, s.idle, s.closed) == (0, 0, {"cancelled": 1})
    assert await pool.acquire(opts()) is not session


async def test_cancel_during_the_liveness_noop(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool(noop_after=10, idle_timeout=30)
    s = await pool.acquire(opts())
    pool.release(s)
    clock.advance(10)
    stream = opener.stream(s)
    stream.hold = asyncio.Event()
    stream.reading.clear()
    task = asyncio.create_task(pool.acquire(opts()))
    await stream.reading.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.closed
    stats = pool.stats[NAME]
    assert (stats.open, stats.closed) == (0, {"cancelled": 1})


async def test_cancel_while_connecting(make_pool: PoolFactory, opener: ScriptedOpener) -> None:
    opener.hang = asyncio.Event()
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    task = asyncio.create_task(pool.acquire(opts()))
    await opener.started.wait()
    waiter = asyncio.create_task(pool.acquire(opts()))
    await settle()
    assert pool.stats[NAME].waiting == 1
    task.cancel()  # the room goes to the waiter, which connects
    with pytest.raises(asyncio.CancelledError):
        await task
    opener.hang.set()
    session = await waiter
    assert not session.closed and pool.stats[NAME].open == 1


@pytest.mark.parametrize("seed", range(6))
async def test_random_workload_with_cancellations_leaks_nothing(
    seed: int, make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    rng = random.Random(seed)
    pool = make_pool(
        max_per_destination=2, max_connections=4, pool_timeout=5, noop_after=5, idle_timeout=20
    )
    in_use: set[Session] = set()

    def check() -> None:
        stats = pool.stats
        assert stats.total.open <= 4
        assert all(d.open <= 2 for d in stats.values())

    async def worker(i: int) -> None:
        for _ in range(8):
            host = f"h{rng.randrange(3)}.test"
            action = rng.random()
            try:
                async with pool.session(opts(host=host)) as s:
                    assert s not in in_use
                    in_use.add(s)
                    check()
                    try:
                        if action < 0.15:
                            opener.stream(s).hold = asyncio.Event()  # hangs: cancelled later
                        if action < 0.6:
                            await s.send("a@x.test", "b@y.test", MSG)
                        for _ in range(rng.randrange(3)):
                            await asyncio.sleep(0)
                        if action > 0.9:
                            raise RuntimeError("caller bug")
                    finally:
                        in_use.discard(s)
                clock.advance(rng.random() * 3)
            except RuntimeError:
                pass

    tasks = [asyncio.create_task(worker(i)) for i in range(10)]
    for _ in range(40):
        await asyncio.sleep(0)
        check()
        running = [t for t in tasks if not t.done()]
        if running and rng.random() < 0.2:
            rng.choice(running).cancel()
    # Whatever hangs now is stuck on a held stream: cancel it too.
    for _ in range(200):
        if all(t.done() for t in tasks):
            break
        await asyncio.sleep(0)
        for t in tasks:
            if not t.done() and rng.random() < 0.05:
                t.cancel()
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError | MxpressError) for r in results)

    total = pool.stats.total
    assert (total.active, total.connecting, total.waiting) == (0, 0, 0)
    live = [s for s in opener.links if not s.closed]
    assert len(live) == total.idle  # every open session is idle in the pool: no leak
    assert all(s.is_usable() for s in live)  # none left mid-transaction
    assert total.created == len(opener.links)
    await pool.close()
    assert all(s.closed for s in opener.links)
