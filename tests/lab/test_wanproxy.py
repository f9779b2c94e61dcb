"""bench/wanproxy.py adds the round trips it promises, and no more: RTT per exchange, one
extra RTT per connection, and no serialization of chunks in flight. Loopback only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from bench.wanproxy import WanProxy

from tests.lab.servers import free_port

RTT = 0.1
SLACK = 0.04  # timer granularity and a busy 2-core box; the model itself is exact

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hello\r\n")  # server speaks first, like SMTP
    await _echo(reader, writer)


async def _serve(handler: Handler) -> tuple[asyncio.Server, tuple[str, int]]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[:2]


@pytest.fixture
async def echo_proxy() -> AsyncIterator[WanProxy]:
    server, address = await _serve(_greet)
    async with server, WanProxy(listen=("127.0.0.1", 0), target=address, rtt=RTT) as proxy:
        yield proxy


async def test_connect_and_greeting_cost_two_rtt(echo_proxy: WanProxy) -> None:
    """SYN/SYN-ACK (1 RTT) + ACK and greeting (1 RTT): the first byte comes at 2 RTT."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(echo_proxy.host, echo_proxy.port)
    assert time.monotonic() - start < 0.02  # the kernel accepts at once
    assert await reader.readline() == b"220 hello\r\n"
    elapsed = time.monotonic() - start
    assert 2 * RTT - 0.005 <= elapsed <= 2 * RTT + SLACK, elapsed
    writer.close()
    assert echo_proxy.connections == 1


async def test_client_speaking_first_also_waits_for_the_handshake() -> None:
    server, address = await _serve(_echo)
    async with server, WanProxy(target=address, rtt=RTT) as proxy:
        start = time.monotonic()
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        elapsed = time.monotonic() - start
        assert 2 * RTT - 0.005 <= elapsed <= 2 * RTT + SLACK, elapsed
        writer.close()


async def test_echo_round_trip_is_one_rtt(echo_proxy: WanProxy) -> None:
    reader, writer = await asyncio.open_connection(echo_proxy.host, echo_proxy.port)
    await reader.readline()  # past the handshake
    times = []
    for i in range(3):
        start = time.monotonic()
        writer.write(b"ping %d\n" % i)
        assert await reader.readline() == b"ping %d\n" % i
        times.append(time.monotonic() - start)
    assert all(0.095 <= t <= 0.14 for t in times), times
    writer.close()


async def test_chunks_in_flight_are_not_serialized() -> None:
    """10 chunks written 5 ms apart each arrive RTT/2 after they were sent (a proxy that
    slept per chunk would need 10 x RTT/2)."""
    arrivals: dict[int, float] = {}
    got_all = asyncio.Event()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            arrivals[int(line.split()[1])] = time.monotonic()
            if len(arrivals) == 10:
                got_all.set()
        writer.close()

    server, address = await _serve(record)
    async with server, WanProxy(target=address, rtt=RTT) as proxy:
        _, writer = await asyncio.open_connection(proxy.host, proxy.port)
        await asyncio.sleep(2 * RTT)  # let the simulated handshake finish
        sent: dict[int, float] = {}
        for i in range(10):
            sent[i] = time.monotonic()
            writer.write(b"chunk %d\n" % i)
            await writer.drain()
            await asyncio.sleep(0.005)
        await asyncio.wait_for(got_all.wait(), 2)
        one_way = [arrivals[i] - sent[i] for i in range(10)]
        assert all(RTT / 2 - 0.003 <= t <= RTT / 2 + SLACK / 2 for t in one_way), one_way
        assert arrivals[9] - sent[0] <= RTT / 2 + 0.05 + SLACK / 2
        assert proxy.bytes_up == sum(len(b"chunk %d\n" % i) for i in range(10))
        writer.close()


async def test_end_of_stream_is_delayed_and_passed_on(echo_proxy: WanProxy) -> None:
    reader, writer = await asyncio.open_connection(echo_proxy.host, echo_proxy.port)
    await reader.readline()
    start = time.monotonic()
    writer.write(b"last\n")
    writer.write_eof()  # half-close: the echo server still answers, then closes
    assert await reader.read() == b"last\n"  # data then EOF
    assert RTT - 0.005 <= time.monotonic() - start <= RTT + SLACK
    writer.close()
    await asyncio.sleep(RTT)
    assert echo_proxy.active == 0


async def test_refused_target_resets_the_client() -> None:
    port = free_port()  # nothing listens there
    async with WanProxy(target=("127.0.0.1", port), rtt=0.02) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        with pytest.raises(ConnectionResetError):
            data = await asyncio.wait_for(reader.read(), 2)
            if not data:
                raise ConnectionResetError("closed")  # an EOF is an acceptable way to see it too
        writer.close()
        assert proxy.active == 0


async def test_no_handshake_option_and_rtt_zero() -> None:
    server, address = await _serve(_greet)
    async with server:
        async with WanProxy(target=address, rtt=RTT, handshake=False) as proxy:
            start = time.monotonic()
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            await reader.readline()
            assert RTT / 2 - 0.005 <= time.monotonic() - start <= RTT / 2 + SLACK
            writer.close()
        async with WanProxy(target=address, rtt=0) as proxy:
            start = time.monotonic()
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            await reader.readline()
            assert time.monotonic() - start < 0.02
            writer.close()


async def test_close_cuts_open_connections(echo_proxy: WanProxy) -> None:
    reader, writer = await asyncio.open_connection(echo_proxy.host, echo_proxy.port)
    await reader.readline()
    assert echo_proxy.active == 1
    await echo_proxy.close()
    assert echo_proxy.active == 0
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        if not await asyncio.wait_for(reader.read(), 2):
            raise ConnectionResetError("closed")
    writer.close()


def test_only_loopback() -> None:
    for bad in ("10.1.2.3", "0.0.0.0", "localhost"):
        with pytest.raises(ValueError):
            WanProxy(listen=(bad, 0), target=("127.0.0.1", 25))
        with pytest.raises(ValueError):
            WanProxy(target=(bad, 25))


SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "wanproxy.py"


async def test_cli_proxies() -> None:
    server, (host, port) = await _serve(_greet)
    listen = free_port()
    argv = [sys.executable, str(SCRIPT), "--listen", f"127.0.0.1:{listen}"]
    argv += ["--target", f"{host}:{port}", "--rtt-ms", "40"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A plain Popen (not asyncio's): the pipe is read from a thread, and we own the pid.
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)  # noqa: ASYNC220
    try:
        assert proc.stderr is not None
        line = await asyncio.to_thread(proc.stderr.readline)
        assert b"RTT 40 ms" in line, line
        async with server:
            start = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            assert await reader.readline() == b"220 hello\r\n"
            assert 0.08 - 0.005 <= time.monotonic() - start <= 0.08 + SLACK
            writer.close()
    finally:
        proc.terminate()
        proc.wait(5)
    assert proc.stderr is not None
    assert b"1 connections" in proc.stderr.read()
    proc.stderr.close()
