"""A drainer (delivery/batcher.py) whose queue ran empty keeps its session for a moment:
back-to-back senders share one lease, and the session goes back to the pool when no more
work comes, when the batcher closes, or when it is no longer fit to use."""

from __future__ import annotations

import asyncio

from mxpress.delivery.batcher import Batcher
from mxpress.protocol.client import Outgoing
from tests.pool.conftest import MSG, PoolFactory, ScriptedOpener, opts

NAME = "mx1.test:25 none"


def outgoing(n: int) -> Outgoing:
    return Outgoing("app@example.test", [f"user{n}@mx1.test"], MSG)


async def test_back_to_back_sends_share_one_lease(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    lingering = Batcher(make_pool(), linger=5.0)
    for n in range(3):
        (delivery,) = await lingering.submit(opts(), [outgoing(n)])
        assert delivery.result is not None and delivery.result.ok
    stats = lingering._pool.stats[NAME]
    # One acquire for all three: the session never went back to the pool in between.
    assert (stats.created, stats.reused, stats.active, stats.idle) == (1, 0, 1, 0)
    server = opener.server(next(iter(opener.links)))
    assert [m.recipients for m in server.messages] == [[f"user{n}@mx1.test"] for n in range(3)]
    await lingering.close()

    # Without lingering, each send acquires the pooled session again.
    eager = Batcher(make_pool(), linger=0)
    for n in range(3):
        await eager.submit(opts(), [outgoing(n)])
    stats = eager._pool.stats[NAME]
    assert (stats.created, stats.reused, stats.active, stats.idle) == (1, 2, 0, 1)
    await eager.close()


async def test_only_the_first_delivery_of_a_lease_carries_its_setup(
    make_pool: PoolFactory,
) -> None:
    batcher = Batcher(make_pool(), linger=5.0)
    (first,) = await batcher.submit(opts(), [outgoing(0)])
    (second,) = await batcher.submit(opts(), [outgoing(1)])
    assert first.new_session and first.setup is not None and "pool" in first.setup
    assert not second.new_session and second.setup is None
    await batcher.close()


async def test_the_session_goes_back_when_no_more_work_comes(make_pool: PoolFactory) -> None:
    pool = make_pool()
    batcher = Batcher(pool, linger=0.02)
    await batcher.submit(opts(), [outgoing(0)])
    assert pool.stats[NAME].active == 1  # lingering
    for _ in range(200):
        if pool.stats[NAME].idle:
            break
        await asyncio.sleep(0.01)
    stats = pool.stats[NAME]
    assert (stats.active, stats.idle, dict(stats.closed)) == (0, 1, {})
    await batcher.close()


async def test_close_gives_lingering_sessions_back_for_a_polite_quit(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    batcher = Batcher(pool, linger=60.0)
    await batcher.submit(opts(), [outgoing(0)])
    await batcher.close()
    stats = pool.stats[NAME]
    assert (stats.active, stats.idle, dict(stats.closed)) == (0, 1, {})  # not cancelled
    await pool.close()
    (session,) = opener.links
    assert opener.server(session).commands[-1] == "QUIT"
    assert pool.stats[NAME].closed == {"pool_closed": 1}


async def test_a_session_that_went_stale_while_lingering_is_not_used_again(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    batcher = Batcher(pool, linger=60.0)
    await batcher.submit(opts(), [outgoing(0)])
    (stale,) = opener.links
    opener.stream(stale).push("421 4.4.2 scripted.test Error: timeout exceeded")
    writes = opener.stream(stale).writes
    (delivery,) = await batcher.submit(opts(), [outgoing(1)])
    assert delivery.result is not None and delivery.result.ok and delivery.new_session
    assert opener.stream(stale).writes == writes  # nothing more was sent on it
    fresh = [s for s in opener.links if s is not stale]
    assert len(fresh) == 1
    assert [m.recipients for m in opener.server(fresh[0]).messages] == [["user1@mx1.test"]]
    assert pool.stats[NAME].closed == {"stale": 1}
    await batcher.close()


async def test_a_session_is_not_kept_while_others_wait_for_the_pool(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool(max_connections=1, pool_timeout=5.0)
    session = await pool.acquire(opts())
    assert pool.keeps(session)
    other = asyncio.create_task(pool.acquire(opts("mx2.test")))
    await asyncio.sleep(0)  # its first step queues it: nothing is free
    assert pool.stats.total.waiting == 1
    assert not pool.keeps(session)  # its room is wanted: give it back
    pool.release(session)
    pool.release(await other)
    assert not pool.keeps(session)  # not checked out any more
