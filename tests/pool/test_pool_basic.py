"""Reuse, per-key isolation, release rules, stats and repr, configuration, close."""

from __future__ import annotations

import asyncio

import pytest

from mxpress.client.session import TLSMode
from mxpress.client.timeouts import Timeouts
from mxpress.errors import (
    ConfigError,
    MxpressError,
    PermanentDeliveryError,
    TLSError,
    TransientDeliveryError,
    TransportError,
)
from mxpress.pool import CloseReason, Pool
from mxpress.transport.scripted import ScriptedServer
from tests.pool.conftest import MSG, FakeClock, PoolFactory, ScriptedOpener, opts

NAME = "mx1.test:25 none"


async def test_reuses_the_most_recently_used_idle_session(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool()
    a = await pool.acquire(opts())
    b = await pool.acquire(opts())
    pool.release(a)
    clock.advance(1)
    pool.release(b)
    assert await pool.acquire(opts()) is b  # LIFO: `a` stays idle and can be reaped
    s = pool.stats[NAME]
    assert (s.active, s.idle, s.connecting, s.created, s.reused) == (1, 1, 0, 2, 1)


async def test_session_block_sends_and_returns_the_session(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    async with pool.session(opts()) as first:
        await first.send("a@x.test", "b@y.test", MSG)
    stream = opener.stream(first)
    trips = stream.round_trips
    async with pool.session(opts()) as second:
        assert stream.round_trips == trips  # a reuse costs no round trip
        await second.send("a@x.test", "c@y.test", MSG)
    assert second is first
    assert len(opener.calls) == 1
    assert len(opener.server(first).messages) == 2
    s = pool.stats[NAME]
    assert (s.active, s.idle, s.created, s.reused) == (0, 1, 1, 1)


async def test_sessions_of_different_users_are_never_shared(make_pool: PoolFactory) -> None:
    pool = make_pool()
    alice = await pool.acquire(opts(username="alice", password="pw-a"))
    pool.release(alice)
    bob = await pool.acquire(opts(username="bob", password="pw-b"))
    assert bob is not alice
    pool.release(bob)
    # Same user, other password: another pool too (the key holds a fingerprint).
    other = await pool.acquire(opts(username="alice", password="changed"))
    assert other is not alice and other is not bob
    assert await pool.acquire(opts(username="alice", password="pw-a")) is alice
    assert set(pool.stats) == {f"{NAME} alice", f"{NAME} bob", f"{NAME} alice #2"}
    assert "pw-a" not in repr(pool) and "changed" not in repr(pool)


async def test_plaintext_session_is_never_handed_out_where_tls_is_required(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    plain = await pool.acquire(opts())
    pool.release(plain)
    # The scripted server offers no STARTTLS: a new session cannot be set up, and the
    # idle plaintext one must not be used instead.
    with pytest.raises(TLSError):
        await pool.acquire(opts(tls=TLSMode.REQUIRED))
    assert opener.calls[-1].tls is TLSMode.REQUIRED
    assert pool.stats[NAME].idle == 1


async def test_other_source_address_is_another_pool_but_timeouts_are_not(
    make_pool: PoolFactory,
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    pool.release(s)
    assert await pool.acquire(opts(source_address="127.0.0.7")) is not s
    assert await pool.acquire(opts(timeouts=Timeouts.uniform(3))) is s


async def test_refused_message_keeps_the_session(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    opener.server_factory = lambda: ScriptedServer(
        rcpt_replies={"nobody@y.test": "550 5.1.1 no such user"}
    )
    pool = make_pool()
    with pytest.raises(PermanentDeliveryError):
        async with pool.session(opts()) as s:
            await s.send("a@x.test", "nobody@y.test", MSG)
    assert pool.stats[NAME].idle == 1 and not pool.stats[NAME].closed
    async with pool.session(opts()) as again:
        result = await again.send("a@x.test", "b@y.test", MSG)
    assert again is s and result.ok


async def test_421_mid_transaction_retires_the_session(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    opener.server_factory = lambda: ScriptedServer(
        hook=lambda line: "421 4.3.2 shutting down" if line.startswith("MAIL") else None
    )
    pool = make_pool()
    with pytest.raises(TransientDeliveryError):
        async with pool.session(opts()) as s:
            await s.send("a@x.test", "b@y.test", MSG)
    assert s.closed
    stats = pool.stats[NAME]
    assert (stats.active, stats.idle, stats.closed) == (0, 0, {"broken": 1})
    assert await pool.acquire(opts()) is not s


async def test_disconnect_mid_transaction_retires_the_session(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    with pytest.raises(TransportError):
        async with pool.session(opts()) as s:
            opener.stream(s).disconnect()
            await s.send("a@x.test", "b@y.test", MSG)
    assert s.closed and s.body_sent_before_failure is False
    assert pool.stats[NAME].closed == {"broken": 1}
    assert pool.stats[NAME].open == 0


async def test_broken_session_released_by_hand_is_not_pooled(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    opener.stream(s).disconnect()
    with pytest.raises(TransportError):
        await s.send("a@x.test", "b@y.test", MSG)
    pool.release(s)  # reuse=True, but it is closed
    assert pool.stats[NAME].closed == {"broken": 1}
    assert pool.stats[NAME].idle == 0


async def test_other_exception_in_block_closes_without_quit(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    with pytest.raises(ZeroDivisionError):
        async with pool.session(opts()) as s:
            _ = 1 / 0
    assert s.closed
    assert "QUIT" not in opener.server(s).commands
    assert pool.stats[NAME].closed == {"error": 1}


async def test_release_without_reuse_quits_politely(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    pool.release(s, reuse=False)
    await pool.reap()  # waits for pending QUITs
    assert s.closed and opener.server(s).commands[-1] == "QUIT"
    assert pool.stats[NAME].closed == {"discarded": 1}


async def test_release_twice_or_a_foreign_session_is_an_error(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    pool.release(s)
    with pytest.raises(ConfigError, match="not checked out from this pool"):
        pool.release(s)
    stranger = await opener(opts())
    with pytest.raises(ConfigError):
        pool.release(stranger)
    assert pool.stats[NAME].idle == 1


async def test_release_inside_the_block_is_not_repeated_on_exit(make_pool: PoolFactory) -> None:
    pool = make_pool()
    async with pool.session(opts()) as s:
        pool.release(s)
    assert pool.stats[NAME].idle == 1 and pool.stats[NAME].active == 0


async def test_max_messages_per_session(make_pool: PoolFactory, opener: ScriptedOpener) -> None:
    pool = make_pool(max_messages_per_session=2)
    async with pool.session(opts()) as s:
        await s.send("a@x.test", "b@y.test", MSG)
    assert pool.stats[NAME].idle == 1
    async with pool.session(opts()) as again:
        await again.send("a@x.test", "b@y.test", MSG)
    assert again is s
    await pool.reap()
    assert pool.stats[NAME].closed == {"max_messages": 1}
    assert s.closed and opener.server(s).commands[-1] == "QUIT"


async def test_max_session_age(
    make_pool: PoolFactory, opener: ScriptedOpener, clock: FakeClock
) -> None:
    pool = make_pool(max_session_age=60, idle_timeout=1000, noop_after=1000)
    s = await pool.acquire(opts())
    pool.release(s)
    clock.advance(59)
    assert await pool.acquire(opts()) is s
    pool.release(s)
    clock.advance(1)
    fresh = await pool.acquire(opts())
    assert fresh is not s
    await pool.reap()
    assert s.closed and opener.server(s).commands[-1] == "QUIT"
    # Released past its age: retired at once rather than pooled.
    clock.advance(60)
    pool.release(fresh)
    assert pool.stats[NAME].closed == {"age": 2}
    assert pool.stats[NAME].idle == 0


async def test_stats_and_repr(make_pool: PoolFactory) -> None:
    pool = make_pool()
    a = await pool.acquire(opts(username="alice", password="s3cret"))
    b = await pool.acquire(opts(host="mx2.test"))
    pool.release(b)
    stats = pool.stats
    assert stats[f"{NAME} alice"].active == 1
    assert stats["mx2.test:25 none"].idle == 1
    assert (stats.total.active, stats.total.idle, stats.total.created) == (1, 1, 2)
    text = repr(pool)
    assert "mx1.test:25 none alice: active=1 idle=0" in text
    assert "mx2.test:25 none: active=0 idle=1" in text
    assert "s3cret" not in text
    pool.release(a, reuse=False)
    assert "closed={discarded:1}" in repr(pool)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"max_per_destination": -1}, "max_per_destination"),
        ({"max_messages_per_session": 0}, "max_messages_per_session"),
        ({"max_session_age": 0}, "max_session_age"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"idle_timeout": "30"}, "idle_timeout"),
        ({"noop_after": -0.5}, "noop_after"),
        ({"noop_after": float("nan")}, "noop_after"),
        ({"pool_timeout": 0}, "pool_timeout"),
        ({"backoff_initial": 0}, "backoff_initial"),
        ({"backoff_initial": 10, "backoff_max": 5}, "backoff_max"),
        ({"reap_interval": 0}, "reap_interval"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Pool(**kwargs)  # type: ignore[arg-type]


def test_noop_after_zero_is_allowed_and_the_reaper_interval_follows_idle_timeout() -> None:
    assert Pool(noop_after=0).config.noop_after == 0
    assert Pool(idle_timeout=4).config.reap_every == 2.0
    assert Pool().config.reap_every == 5.0
    assert Pool(reap_interval=0.5).config.reap_every == 0.5
    limited = Pool(max_connections=7, max_per_destination=3)
    assert (limited.max_connections, limited.max_per_destination) == (7, 3)


async def test_retire_records_the_callers_reason(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool()
    s = await pool.acquire(opts())
    assert pool.holds(s)
    pool.retire(s, CloseReason.ERROR)
    assert not pool.holds(s) and s.closed
    assert "QUIT" not in opener.server(s).commands  # not a polite reason: no QUIT
    assert pool.stats[NAME].closed == {"error": 1}


async def test_pool_as_async_context_manager(opener: ScriptedOpener, clock: FakeClock) -> None:
    async with Pool(opener=opener, clock=clock) as pool:
        s = await pool.acquire(opts())
        pool.release(s)
    assert pool.closed and s.closed
    assert opener.server(s).commands[-1] == "QUIT"


async def test_close_quits_idle_fails_waiters_and_refuses_acquires(
    make_pool: PoolFactory, opener: ScriptedOpener
) -> None:
    pool = make_pool(max_per_destination=1, pool_timeout=5)
    idle = await pool.acquire(opts(host="mx2.test"))
    busy = await pool.acquire(opts())
    pool.release(idle)
    waiter = asyncio.create_task(pool.acquire(opts()))
    await asyncio.sleep(0)
    assert pool.stats[NAME].waiting == 1
    await pool.close()
    with pytest.raises(MxpressError, match="pool is closed"):
        await waiter
    assert idle.closed and opener.server(idle).commands[-1] == "QUIT"
    assert not busy.closed  # in use: closed when given back
    pool.release(busy)
    await pool.close()  # twice is fine; waits for the QUIT
    assert busy.closed and opener.server(busy).commands[-1] == "QUIT"
    assert pool.stats.total.closed == {"pool_closed": 2}
    with pytest.raises(MxpressError, match="pool is closed"):
        await pool.acquire(opts())
    assert "closed" in repr(pool)


async def test_default_opener_is_open_session_with_the_pool_clock() -> None:
    # Nothing listens on this loopback port: the default opener must try a real connect
    # and report ConnectError (then the host is in backoff).
    pool = Pool(backoff_initial=5, pool_timeout=1)
    options = opts(host="127.0.0.1", port=9, timeouts=Timeouts.uniform(1))
    with pytest.raises(TransportError):
        await pool.acquire(options)
    with pytest.raises(TransportError, match="backoff"):
        await pool.acquire(options)
    await pool.close()
