"""Loopback throughput into Postfix smtp-sink: mxpress vs aiosmtplib vs smtplib, one run.

    .venv/bin/python bench/smtp_throughput.py [--messages 20000] [--connections 8]

1 KB messages, one recipient each, N reused connections for every client:
- mxpress send_many: each session streams its share, pipelined across messages;
- mxpress send: N workers each awaiting session.send() per message (PIPELINING only);
- aiosmtplib: N reused connections on uvloop, sendmail() per message;
- smtplib: N threads, each with one reused connection;
- mxpress Mailer.send_many (relay mode, pool of N sessions, 100 concurrent sends).
Prints msgs/s and each one's ratio to aiosmtplib. Not a timed test: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib
import uvloop
from tests.lab.servers import smtp_sink

import mxpress

SENDER = "bench@mxpress.test"
RCPT = "sink@example.test"


def make_message(size: int = 1024) -> bytes:
    head = b"From: bench@mxpress.test\r\nTo: sink@example.test\r\nSubject: bench\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2] + b"\r\n"


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def mxpress_stream(host: str, port: int, n: int, conns: int, data: bytes) -> int:
    async def worker(count: int) -> int:
        async with await mxpress.connect(host, port, tls="none", timeout=30) as session:
            ok = 0
            batch = [(SENDER, [RCPT], data)] * 100
            for start in range(0, count, 100):
                results = await session.send_many(batch[: min(100, count - start)])
                ok += sum(r.ok for r in results)
            return ok

    return sum(await asyncio.gather(*(worker(c) for c in split(n, conns))))


async def mxpress_send(host: str, port: int, n: int, conns: int, data: bytes) -> int:
    async def worker(count: int) -> int:
        async with await mxpress.connect(host, port, tls="none", timeout=30) as session:
            ok = 0
            for _ in range(count):
                await session.send(SENDER, [RCPT], data)
                ok += 1
            return ok

    return sum(await asyncio.gather(*(worker(c) for c in split(n, conns))))


async def mailer_send_many(host: str, port: int, n: int, conns: int, data: bytes) -> int:
    relay = f"smtp://{host}:{port}"
    async with mxpress.Mailer(relay, max_per_destination=conns, timeout=30) as mailer:
        results = await mailer.send_many([data] * n, concurrency=100)
        return sum(r.ok for r in results)


async def aiosmtplib_send(host: str, port: int, n: int, conns: int, data: bytes) -> int:
    async def worker(count: int) -> int:
        client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
        await client.connect()
        ok = 0
        for _ in range(count):
            await client.sendmail(SENDER, [RCPT], data)
            ok += 1
        await client.quit()
        return ok

    return sum(await asyncio.gather(*(worker(c) for c in split(n, conns))))


def smtplib_send(host: str, port: int, n: int, conns: int, data: bytes) -> int:
    counts = [0] * conns

    def worker(i: int, count: int) -> None:
        with smtplib.SMTP(host, port, timeout=30) as client:
            for _ in range(count):
                client.sendmail(SENDER, [RCPT], data)
                counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(split(n, conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    n, conns, data = args.messages, args.connections, make_message(args.size)

    rows: list[tuple[str, int, float]] = []
    with smtp_sink() as sink:
        host, port = sink.host, sink.port
        clients: list[tuple[str, Callable[[], int]]] = [
            ("smtplib (threads)", lambda: smtplib_send(host, port, n, conns, data)),
            (
                "aiosmtplib (uvloop)",
                lambda: run_async(lambda: aiosmtplib_send(host, port, n, conns, data)),
            ),
            ("mxpress send()", lambda: run_async(lambda: mxpress_send(host, port, n, conns, data))),
            (
                "mxpress send_many()",
                lambda: run_async(lambda: mxpress_stream(host, port, n, conns, data)),
            ),
            (
                "mxpress Mailer.send_many()",
                lambda: run_async(lambda: mailer_send_many(host, port, n, conns, data)),
            ),
        ]
        for name, fn in clients:
            start = time.perf_counter()
            ok = fn()
            elapsed = time.perf_counter() - start
            rows.append((name, ok, elapsed))
            print(f"  {name:<22} {ok} msgs in {elapsed:.2f} s", file=sys.stderr)

    anchor = next(ok / t for name, ok, t in rows if name.startswith("aiosmtplib"))
    print(
        f"\nsmtp-sink on loopback, {n} x {len(data)} B messages, 1 recipient, {conns} connections"
    )
    print("| client | messages | seconds | msgs/s | vs aiosmtplib |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, ok, elapsed in rows:
        rate = ok / elapsed
        print(f"| {name} | {ok} | {elapsed:.2f} | {rate:,.0f} | {rate / anchor:.2f}x |")


if __name__ == "__main__":
    main()
