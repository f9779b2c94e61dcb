"""Pool test fixtures: a fake clock and an opener that builds sessions over the scripted
in-memory server (no sockets), with switches to make connects fail or hang."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from mxpress.client.session import Session, SessionOptions, TLSMode, establish
from mxpress.errors import ConnectError, ReadError
from mxpress.pool import Pool
from mxpress.transport.scripted import ScriptedServer, ScriptedStream

MSG = b"Subject: hi\r\n\r\nhello\r\n"


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class PoolStream(ScriptedStream):
    """A scripted stream that can also hold reads (a server that is slow to answer) and
    receive unsolicited lines (a server that speaks while the session is idle)."""

    def __init__(self, server: ScriptedServer, peer: str) -> None:
        super().__init__(server, peer)
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()
        self.dropped = False

    def push(self, line: str) -> None:
        """The server says something nobody asked for."""
        self._pending.append(line)

    def disconnect(self) -> None:
        """The server goes away: every later read fails."""
        self.dropped = True
        self.server.closed = True

    async def read(self, timeout: float | None, phase: str) -> bytes:
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.dropped:
            raise ReadError("connection reset by peer", host=self.peer, phase=phase)
        return await super().read(timeout, phase)


class ScriptedOpener:
    """The pool's `opener` for tests: one ScriptedServer per connection."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[SessionOptions] = []
        self.failing: set[str] = set()  # hosts whose connects raise ConnectError
        self.hang: asyncio.Event | None = None  # when set up, connects wait for it
        self.started = asyncio.Event()  # set when a connect has begun
        self.server_factory: Callable[[], ScriptedServer] = lambda: ScriptedServer(
            auth="PLAIN LOGIN"
        )
        self.links: dict[Session, tuple[ScriptedServer, PoolStream]] = {}

    async def __call__(self, options: SessionOptions) -> Session:
        self.calls.append(options)
        self.started.set()
        if self.hang is not None:
            await self.hang.wait()
        if options.host in self.failing:
            raise ConnectError("connection refused", host=options.host, phase="connect")
        server = self.server_factory()
        stream = PoolStream(server, peer=f"{options.host}:{options.port}")
        session = await establish(stream, options, clock=self.clock)
        self.links[session] = (server, stream)
        return session

    def server(self, session: Session) -> ScriptedServer:
        return self.links[session][0]

    def stream(self, session: Session) -> PoolStream:
        return self.links[session][1]


def opts(host: str = "mx1.test", **kw: Any) -> SessionOptions:
    kw.setdefault("tls", TLSMode.NONE)
    if kw.get("username") is not None:
        kw.setdefault("allow_plaintext_auth", True)
    return SessionOptions(host=host, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def opener(clock: FakeClock) -> ScriptedOpener:
    return ScriptedOpener(clock)


PoolFactory = Callable[..., Pool]


@pytest.fixture
async def make_pool(clock: FakeClock, opener: ScriptedOpener) -> AsyncIterator[PoolFactory]:
    """Build pools on the fake clock and scripted opener; closes them after the test."""
    pools: list[Pool] = []

    def make(**kw: Any) -> Pool:
        kw.setdefault("clock", clock)
        kw.setdefault("opener", opener)
        kw.setdefault("pool_timeout", 0.05)  # real seconds: waits are real
        pool = Pool(**kw)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()
