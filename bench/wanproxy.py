"""WAN simulator: a TCP proxy on loopback that adds a round-trip time to every connection.

    .venv/bin/python bench/wanproxy.py --listen 127.0.0.1:2626 --target 127.0.0.1:2525 --rtt-ms 50

    async with WanProxy(listen=("127.0.0.1", 0), target=(host, port), rtt=0.050) as proxy:
        ...connect to proxy.host, proxy.port...

Model (kernel netem is not available here, so latency is added in user space):
- Every byte, and the end of stream, is delivered RTT/2 after the proxy read it, in each
  direction. Each direction is a timed queue drained by one timer: data read at t goes out at
  t + RTT/2 however many other chunks are in flight, so pipelined traffic is not serialized.
  Chunks due at the same moment are written together (TCP keeps no boundaries either).
- The TCP handshake costs one RTT. The client's connect() to the proxy returns at once (the
  kernel completes it), so the cost is moved to the data: the proxy connects to the target
  1.5 RTT after accepting, as on a real path where SYN + SYN-ACK take one RTT and the final
  ACK half of another before the server's accept() returns. A greeting the server sends at
  once therefore reaches the client 2 RTT after connect(), and a client that speaks first
  (its bytes wait for the "handshake") gets its first reply after 2 RTT too: both as on a
  real network. `handshake=False` opens the target at once and only delays bytes.
- A refused target connection makes the proxy reset the client's connection at that moment.
- No bandwidth limit; at most `high_water` bytes are buffered per direction before the proxy
  stops reading from the sender (a stand-in for the TCP window).
Timers have about 1 ms granularity, so expect up to ~1 ms of jitter. The proxy shares the
event loop of whoever runs it; for heavy benchmarks run the CLI as a separate process.
Only 127.0.0.0/8 addresses are accepted, for both ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import struct
import sys
from collections import deque
from types import TracebackType
from typing import Self, cast

__all__ = ["WanProxy", "main"]

_EARLY = 0.0005  # deliver up to 0.5 ms early: loop timers have ~1 ms granularity
_EOF = b""  # queue marker: the sender shut down its side
_RESET = None  # queue marker: the sender's connection broke; pass on an RST


def _loopback(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP literal; use one in 127.0.0.0/8") from None
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"{host!r} is outside 127.0.0.0/8; the WAN simulator is loopback-only")
    return host


def _nodelay(transport: asyncio.BaseTransport) -> None:
    # Nagle plus delayed ACKs would add their own tens of ms on top of the simulated delay.
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reset(transport: asyncio.Transport | None) -> None:
    """Close with an RST (SO_LINGER 0), as a broken or refused connection would."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _DelayLine:
    """One direction: bytes read at t are written at t + delay, in order."""

    def __init__(self, link: _Link, delay: float, high_water: int) -> None:
        self.link = link
        self.loop = link.loop
        self.delay = delay
        self.high_water = high_water
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None  # None until the target is connected
        self.src_paused = False
        self.dst_paused = False
        self.done = False  # EOF or reset delivered, or nowhere left to deliver to

    def push(self, data: bytes | None) -> None:
        # max(): a smaller RTT set mid-stream must not reorder bytes already queued.
        due = max(self.loop.time() + self.delay, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        if data:
            self.queued += len(data)
        self._throttle()
        self.arm()

    def arm(self) -> None:
        if self.timer is None and self.queue and self.dst is not None and not self.done:
            self.timer = self.loop.call_at(self.queue[0][0] - _EARLY, self._flush)

    def _flush(self) -> None:
        self.timer = None
        dst = self.dst
        if dst is None or self.done:
            return
        horizon = self.loop.time() + _EARLY
        chunks: list[bytes] = []
        marker: tuple[bytes | None] | None = None
        while self.queue and self.queue[0][0] <= horizon:
            _, data = self.queue.popleft()
            if not data:
                marker = (data,)
                break
            chunks.append(data)
            self.queued -= len(data)
        if chunks and not dst.is_closing():
            dst.write(b"".join(chunks))
        if marker is not None:
            if marker[0] is _RESET:
                _reset(dst)
            elif not dst.is_closing() and dst.can_write_eof():
                dst.write_eof()
            self.finish()
            return
        self._throttle()
        self.arm()

    def finish(self) -> None:
        """Nothing more will travel this way; the link closes once both ways are finished."""
        if not self.done:
            self.done = True
            self.cancel()
            self.queue.clear()
            self.queued = 0
            self.link.check()

    def _throttle(self) -> None:
        """Stop reading from the sender while too much is buffered on the way."""
        if self.src is None:
            return
        full = self.queued > self.high_water or self.dst_paused
        if full and not self.src_paused:
            self.src_paused = True
            with contextlib.suppress(RuntimeError):
                self.src.pause_reading()
        elif not full and self.src_paused and self.queued < self.high_water // 2:
            self.src_paused = False
            with contextlib.suppress(RuntimeError):
                self.src.resume_reading()

    def set_dst_paused(self, paused: bool) -> None:
        self.dst_paused = paused
        self._throttle()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _End(asyncio.Protocol):
    """One socket of a proxied connection; feeds `out` and is fed by `inbound`."""

    def __init__(self, link: _Link, out: _DelayLine, inbound: _DelayLine) -> None:
        self.link = link
        self.out = out  # bytes read here travel on this line
        self.inbound = inbound  # this line writes into our transport
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance(): uvloop's transports do not subclass asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        _nodelay(transport)
        transport.set_write_buffer_limits(high=self.inbound.high_water)
        self.out.src = transport
        self.inbound.dst = transport
        self.inbound.arm()

    def data_received(self, data: bytes) -> None:
        self.link.count(self, len(data))
        self.out.push(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.out.push(_EOF)
        return True  # keep our write side open: TCP half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof:
            self.eof = True
            self.out.push(_RESET if exc is not None else _EOF)
        self.inbound.finish()  # our socket is gone: nothing can be written to it

    def pause_writing(self) -> None:
        self.inbound.set_dst_paused(True)

    def resume_writing(self) -> None:
        self.inbound.set_dst_paused(False)


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, proxy: WanProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        half = proxy.rtt / 2
        self.up = _DelayLine(self, half, proxy.high_water)  # client -> target
        self.down = _DelayLine(self, half, proxy.high_water)  # target -> client
        self.client = _End(self, self.up, self.down)
        self.server = _End(self, self.down, self.up)
        self.task: asyncio.Task[None] | None = None

    def count(self, end: _End, n: int) -> None:
        if end is self.client:
            self.proxy.bytes_up += n
        else:
            self.proxy.bytes_down += n

    async def open_target(self) -> None:
        proxy = self.proxy
        if proxy.handshake:
            await asyncio.sleep(1.5 * proxy.rtt)
        try:
            await self.loop.create_connection(lambda: self.server, *proxy.target)
        except OSError:
            _reset(self.client.transport)  # what the client would see from a refused SYN
            self.close()

    def check(self) -> None:
        if self.up.done and self.down.done:
            self.close()

    def close(self) -> None:
        for line in (self.up, self.down):
            line.cancel()
        for end in (self.client, self.server):
            if end.transport is not None and not end.transport.is_closing():
                end.transport.close()
        if self in self.proxy._links:
            self.proxy._links.discard(self)
            self.proxy.active -= 1

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        for line in (self.up, self.down):
            line.cancel()
        for end in (self.client, self.server):
            if end.transport is not None:
                end.transport.abort()
        self.close()


class WanProxy:
    """A delaying TCP proxy from `listen` to `target` (both in 127.0.0.0/8); see module doc.

    Counters: `connections` (accepted so far), `active`, `bytes_up` (client to target) and
    `bytes_down`. `rtt` may be changed while running; it applies to connections accepted later.
    """

    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        target: tuple[str, int] = ("127.0.0.1", 25),
        rtt: float = 0.050,
        *,
        handshake: bool = True,
        high_water: int = 4 << 20,
    ) -> None:
        if rtt < 0:
            raise ValueError(f"rtt must be >= 0 seconds, got {rtt}")
        self.listen = (_loopback(listen[0]), int(listen[1]))
        self.target = (_loopback(target[0]), int(target[1]))
        self.rtt = rtt
        self.handshake = handshake
        self.high_water = high_water
        self.connections = 0
        self.active = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("WanProxy is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    def _accept(self) -> _End:
        link = _Link(self)
        self.connections += 1
        self.active += 1
        self._links.add(link)
        link.task = asyncio.get_running_loop().create_task(link.open_target())
        return link.client

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self.listen[0], self.listen[1], backlog=1024, reuse_address=True
        )
        return self

    async def close(self) -> None:
        """Stop listening and cut every proxied connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        return _loopback(host), int(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _serve(listen: tuple[str, int], target: tuple[str, int], rtt: float, hs: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with WanProxy(listen, target, rtt, handshake=hs) as proxy:
        print(
            f"wanproxy: {proxy.host}:{proxy.port} -> {target[0]}:{target[1]}, "
            f"RTT {rtt * 1e3:g} ms{'' if hs else ', no handshake delay'}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        print(
            f"wanproxy: {proxy.connections} connections, "
            f"{proxy.bytes_up} bytes up, {proxy.bytes_down} bytes down",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_hostport, default=("127.0.0.1", 2626), metavar="H:P")
    parser.add_argument("--target", type=_hostport, required=True, metavar="H:P")
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument(
        "--no-handshake", action="store_true", help="connect to the target without delay"
    )
    args = parser.parse_args(argv)
    coro = _serve(args.listen, args.target, args.rtt_ms / 1000, not args.no_handshake)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)


if __name__ == "__main__":
    main()
