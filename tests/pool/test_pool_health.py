"""Health of pooled sessions: idle expiry, stale detection without a round trip, NOOP
only after `noop_after`, the background reaper, forgetting unused destinations."""

from __future__ import annotations

import asyncio

from mxpress.transport.scripted import ScriptedServer
from tests.pool.conftest import FakeClock, PoolFactory, ScriptedOpener, opts

NAME = "mx1.test:25 none"


async def test_reap_closes_sessions_idle_past_the_timeout_with_quit(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool(idle_timeout=30)
    s = await pool.acquire(opts())
    pool.release(s)
    clock.advance(29.9)
    assert await pool.reap() == 0 and pool.stats[NAME].idle == 1
    clock.advance(0.1)
    assert await pool.reap() == 1
    assert s.closed and opener.server(s).commands[-1] == "QUIT"
    assert pool.stats[NAME].closed == {"idle": 1} and pool.stats[NAME].idle == 0


async def test_idle_timeout_is_enforced_on_acquire_even_before_the_reaper_runs(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(idle_timeout=30, noop_after=1000)
    s = await pool.acquire(opts())
    pool.release(s)
    clock.advance(30)
    assert await pool.acquire(opts()) is not s
    assert pool.stats[NAME].closed == {"idle": 1}


async def test_server_closed_while_idle_is_seen_without_a_round_trip(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    pool.release(s)
    server, stream = opener.server(s), opener.stream(s)
    server.closed = True
    commands, trips = len(server.commands), stream.round_trips
    clock.advance(1)
    fresh = await pool.acquire(opts())
    assert fresh is not s and s.closed
    assert len(server.commands) == commands and stream.round_trips == trips  # no QUIT/NOOP
    assert pool.stats[NAME].closed == {"stale": 1}


async def test_unsolicited_reply_while_idle_marks_the_session_stale(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    pool.release(s)
    opener.stream(s).push("421 4.4.2 scripted.test Error: timeout exceeded")
    writes = opener.stream(s).writes
    assert await pool.acquire(opts()) is not s
    assert opener.stream(s).writes == writes
    assert pool.stats[NAME].closed == {"stale": 1}


async def test_reap_also_drops_stale_sessions_without_quit(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    pool.release(s)
    opener.server(s).closed = True
    assert await pool.reap() == 1
    assert "QUIT" not in opener.server(s).commands
    assert pool.stats[NAME].closed == {"stale": 1}


async def test_no_noop_before_noop_after(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool(noop_after=10)
    s = await pool.acquire(opts())
    pool.release(s)
    trips = opener.stream(s).round_trips
    clock.advance(9.9)
    assert await pool.acquire(opts()) is s
    assert "NOOP" not in opener.server(s).commands
    assert opener.stream(s).round_trips == trips


async def test_noop_after_a_long_idle(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool(noop_after=10, idle_timeout=30)
    s = await pool.acquire(opts())
    pool.release(s)
    trips = opener.stream(s).round_trips
    clock.advance(10)
    assert await pool.acquire(opts()) is s
    assert opener.server(s).commands[-1] == "NOOP"
    assert opener.stream(s).round_trips == trips + 1
    assert pool.stats[NAME].reused == 1


async def test_failed_noop_retires_the_session_and_opens_another(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    replies = iter(["421 4.4.2 idle too long", "500 5.5.1 what?"])
    opener.server_factory = lambda: ScriptedServer(
        hook=lambda line: next(replies) if line == "NOOP" else None
    )
    pool = make_pool(noop_after=10, idle_timeout=30, max_per_destination=1)
    first = await pool.acquire(opts())
    pool.release(first)
    clock.advance(10)
    second = await pool.acquire(opts())  # NOOP gets 421: retire, connect anew
    assert second is not first and first.closed
    pool.release(second)
    clock.advance(10)
    third = await pool.acquire(opts())  # NOOP gets 500: retire too
    assert third is not second and second.closed
    s = pool.stats[NAME]
    assert s.closed == {"noop_failed": 2}
    assert (s.created, s.reused, s.active) == (3, 0, 1)


async def test_background_reaper_closes_idle_sessions(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool(idle_timeout=30, reap_interval=0.002)
    s = await pool.acquire(opts())
    pool.release(s)
    clock.advance(31)
    for _ in range(500):  # at most ~1 s of real time; usually a few ms
        if s.closed:
            break
        await asyncio.sleep(0.002)
    assert s.closed and opener.server(s).commands[-1] == "QUIT"
    assert pool.stats[NAME].closed == {"idle": 1}


async def test_close_stops_the_reaper(make_pool: PoolFactory) -> None:
    pool = make_pool()

    def reapers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "mxpress-pool-reaper"]

    assert not reapers()  # started lazily
    await pool.acquire(opts())
    assert len(reapers()) == 1
    await pool.close()
    assert not reapers()


async def test_unused_destinations_are_forgotten_but_counted(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(idle_timeout=30)
    s = await pool.acquire(opts())
    pool.release(s)
    clock.advance(30)
    await pool.reap()
    assert NAME in pool.stats  # just closed: still shown
    clock.advance(31)
    await pool.reap()
    assert NAME not in pool.stats
    total = pool.stats.total
    assert (total.created, total.closed) == (1, {"idle": 1})
