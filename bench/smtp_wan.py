"""Round trips made visible: SMTP through a WAN simulator at 50 ms RTT, one run.

    .venv/bin/python bench/smtp_wan.py [--rtt-ms 50] [--stream 100]

Peers: Postfix smtp-sink (PIPELINING, no CHUNKING) and a real Postfix smtpd (PIPELINING
and CHUNKING), each behind bench/wanproxy.py. For each client on a warm (already set up)
session: the latency of one message, in ms and in RTTs; and a stream of N messages on
one session, in messages per RTT. mxpress, aiosmtplib and smtplib are measured in the
same run. Not a timed test: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiosmtplib
import uvloop
from tests.lab.servers import postfix_smtpd, smtp_sink

import mxpress
from wanproxy import WanProxy

SENDER = "bench@mxpress.test"
RCPT = "user@example.test"
DATA = b"From: bench@mxpress.test\r\nSubject: wan\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12


async def mx_single(port: int, tries: int) -> list[float]:
    async with await mxpress.connect("127.0.0.1", port, tls="none", timeout=30) as s:
        await s.send(SENDER, [RCPT], DATA)  # warm-up: server-side caches
        times = []
        for _ in range(tries):
            t = time.perf_counter()
            await s.send(SENDER, [RCPT], DATA)
            times.append(time.perf_counter() - t)
        return times


async def mx_stream(port: int, n: int) -> float:
    async with await mxpress.connect("127.0.0.1", port, tls="none", timeout=60) as s:
        t = time.perf_counter()
        results = await s.send_many([(SENDER, [RCPT], DATA)] * n)
        elapsed = time.perf_counter() - t
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
        return elapsed


async def aio_single(port: int, tries: int) -> list[float]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=30)
    await client.connect()
    await client.sendmail(SENDER, [RCPT], DATA)
    times = []
    for _ in range(tries):
        t = time.perf_counter()
        await client.sendmail(SENDER, [RCPT], DATA)
        times.append(time.perf_counter() - t)
    await client.quit()
    return times


async def aio_stream(port: int, n: int) -> float:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=60)
    await client.connect()
    t = time.perf_counter()
    for _ in range(n):
        await client.sendmail(SENDER, [RCPT], DATA)
    elapsed = time.perf_counter() - t
    await client.quit()
    return elapsed


def lib_single(port: int, tries: int) -> list[float]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(SENDER, [RCPT], DATA)
        times = []
        for _ in range(tries):
            t = time.perf_counter()
            client.sendmail(SENDER, [RCPT], DATA)
            times.append(time.perf_counter() - t)
        return times


def lib_stream(port: int, n: int) -> float:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        t = time.perf_counter()
        for _ in range(n):
            client.sendmail(SENDER, [RCPT], DATA)
        return time.perf_counter() - t


async def measure(peer: str, target: tuple[str, int], rtt: float, tries: int, n: int) -> list[str]:
    rows = []
    async with WanProxy(listen=("127.0.0.1", 0), target=target, rtt=rtt) as proxy:
        port = proxy.port
        loop = asyncio.get_running_loop()
        for name, single, stream in (
            ("mxpress", mx_single(port, tries), mx_stream(port, n)),
            ("aiosmtplib", aio_single(port, tries), aio_stream(port, n)),
            (
                "smtplib",
                loop.run_in_executor(None, lib_single, port, tries),
                loop.run_in_executor(None, lib_stream, port, n),
            ),
        ):
            times = await single
            elapsed = await stream
            p50 = statistics.median(times)
            rows.append(
                f"| {peer} | {name} | {p50 * 1e3:.1f} | {p50 / rtt:.2f} | "
                f"{elapsed:.2f} | {n / (elapsed / rtt):.2f} |"
            )
            print(rows[-1], file=sys.stderr)
    return rows


async def main_async(rtt: float, tries: int, n: int) -> None:
    rows = []
    with smtp_sink() as sink:
        rows += await measure("smtp-sink (PIPELINING)", (sink.host, sink.port), rtt, tries, n)
    with (
        tempfile.TemporaryDirectory(prefix="mxpress-wan-") as tmp,
        postfix_smtpd(workdir=Path(tmp)) as smtpd,
    ):
        rows += await measure("Postfix smtpd (CHUNKING)", (smtpd.host, smtpd.port), rtt, tries, n)
    print(f"\nWAN simulator: RTT {rtt * 1e3:.0f} ms; warm session; {n}-message stream")
    print("| peer | client | one message p50 ms | in RTT | stream s | msgs per RTT |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--stream", type=int, default=100)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main_async(args.rtt_ms / 1000, args.tries, args.stream))


if __name__ == "__main__":
    main()
