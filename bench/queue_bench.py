"""Durable queue benchmarks (a script, not a test): prints numbers.

1. fsync:   the raw cost of one fsync in the data directory (what each commit pays).
2. enqueue: durable (fsynced) enqueues of 1 KB messages, 1 sequential writer vs 100
            concurrent writers, for each group-commit window: msgs/s, commits, messages
            per commit, enqueue latency p50/p99. Then open-loop arrivals at --rate/s
            (each submission its own task, as from many SMTP clients).
3. deliver: lease_due(100) + record(delivered) for every leased message, 100 records
            in flight: messages finished per second.
4. depth:   RSS after enqueuing --depth tiny messages (default 200,000; 1,000,000 takes
            a few minutes), then one lease_due(100) and counts() at that depth.

    .venv/bin/python bench/queue_bench.py [--messages 20000] [--depth 200000]
        [--windows 0,0.002] [--rate 5000] [--dir DIR] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

from mxpress.queue import AttemptOutcome, NewMessage, RecipientState, SQLiteQueue

BODY = b"Subject: bench\r\n\r\n" + b"x" * 1000


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def files_mb(directory: Path, pattern: str) -> float:
    return sum(p.stat().st_size for p in directory.glob(pattern)) / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def bench_fsync(directory: Path) -> None:
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        samples = []
        for _ in range(200):
            os.write(fd, b"x" * 512)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    print(f"fsync    {directory}: p50 {pct(samples, 50):.3f} ms  p99 {pct(samples, 99):.3f} ms")


async def bench_enqueue(directory: Path, messages: int, writers: int, window: float) -> None:
    path = directory / f"enqueue-{writers}-{window}.sqlite3"
    latencies: list[float] = []
    new = NewMessage("bench@example.org", ["rcpt@example.com"], BODY)
    async with SQLiteQueue(path, group_commit_window=window) as store:
        per_writer = messages // writers

        async def writer() -> None:
            for _ in range(per_writer):
                start = time.perf_counter()
                await store.enqueue(new)
                latencies.append((time.perf_counter() - start) * 1e3)

        start = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - start
        stats = store.stats
    done = per_writer * writers
    print(
        f"enqueue  writers {writers:>3}  window {window * 1e3:>4.1f} ms: "
        f"{done / elapsed:>8.0f} msgs/s  {stats.commits:>6} commits  "
        f"{done / stats.commits:>6.1f} msgs/commit  max batch {stats.max_batch:>3}  "
        f"latency p50 {pct(latencies, 50):.2f} ms p99 {pct(latencies, 99):.2f} ms"
    )


async def bench_arrivals(directory: Path, messages: int, rate: float, window: float) -> None:
    """Open loop: submissions arrive at `rate` per second (as from many SMTP clients),
    each its own task, whether or not earlier ones are done."""
    path = directory / f"arrivals-{window}.sqlite3"
    latencies: list[float] = []
    new = NewMessage("bench@example.org", ["rcpt@example.com"], BODY)
    loop = asyncio.get_running_loop()
    async with SQLiteQueue(path, group_commit_window=window) as store:

        async def submit() -> None:
            start = time.perf_counter()
            await store.enqueue(new)
            latencies.append((time.perf_counter() - start) * 1e3)

        tasks: list[asyncio.Task[None]] = []
        begin = loop.time()
        for i in range(messages):
            delay = begin + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(submit()))
        await asyncio.gather(*tasks)
        stats = store.stats
    print(
        f"arrivals {rate:>6.0f}/s      window {window * 1e3:>4.1f} ms: {stats.commits:>6} commits  "
        f"{messages / stats.commits:>6.1f} msgs/commit  "
        f"latency p50 {pct(latencies, 50):.2f} ms p99 {pct(latencies, 99):.2f} ms"
    )


async def bench_deliver(directory: Path, messages: int) -> None:
    path = directory / "deliver.sqlite3"
    new = NewMessage("bench@example.org", ["rcpt@example.com"], BODY)
    async with SQLiteQueue(path) as store:
        for _ in range(messages // 1000):
            await asyncio.gather(*(store.enqueue(new) for _ in range(1000)))
        commits_before = store.stats.commits
        finished = 0
        start = time.perf_counter()
        while True:
            leases = await store.lease_due(time.time(), 100, 300)
            if not leases:
                break
            outcome = [AttemptOutcome("rcpt@example.com", RecipientState.DELIVERED, "250 ok")]
            results = await asyncio.gather(*(store.record(x, outcome) for x in leases))
            finished += sum(1 for m in results if m.state == "done")
        elapsed = time.perf_counter() - start
        commits = store.stats.commits - commits_before
    print(
        f"deliver  lease_due(100) + record: {finished / elapsed:>8.0f} msgs/s finished  "
        f"({finished} messages, {commits} commits)"
    )


async def bench_depth(directory: Path, depth: int) -> None:
    path = directory / "depth.sqlite3"
    new = NewMessage("b@example.org", ["r@example.com"], b"Subject: t\r\n\r\nx\r\n")
    before = rss_mb()
    async with SQLiteQueue(path, max_batch=1000) as store:
        start = time.perf_counter()
        chunk = 1000
        for done in range(0, depth, chunk):
            await asyncio.gather(*(store.enqueue(new) for _ in range(min(chunk, depth - done))))
        elapsed = time.perf_counter() - start
        after_fill = rss_mb()
        start = time.perf_counter()
        leases = await store.lease_due(time.time(), 100, 300)
        lease_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        counts = await store.counts()
        counts_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        await store.get(leases[-1].message.id)
        get_ms = (time.perf_counter() - start) * 1e3
    size = files_mb(directory, "depth.sqlite3*")
    print(
        f"depth    {depth} messages enqueued in {elapsed:.1f} s ({depth / elapsed:.0f} msgs/s); "
        f"file {size:.0f} MB"
    )
    print(
        f"depth    RSS before {before:.1f} MB, after enqueue {after_fill:.1f} MB, "
        f"after lease/counts {rss_mb():.1f} MB, peak "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB"
    )
    print(
        f"depth    lease_due(100) {lease_ms:.2f} ms, get {get_ms:.2f} ms, "
        f"counts() {counts_ms:.0f} ms (active {counts.messages['active']})"
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        bench_fsync(directory)
        windows = [float(w) for w in args.windows.split(",")]
        for window in windows:
            await bench_enqueue(directory, min(args.messages, 2000), 1, window)
            await bench_enqueue(directory, args.messages, 100, window)
        for window in windows:
            await bench_arrivals(directory, min(args.messages, 10000), args.rate, window)
        await bench_deliver(directory, args.messages)
        if args.depth:
            await bench_depth(directory, args.depth)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--depth", type=int, default=200_000, help="0 skips the RSS run")
    parser.add_argument("--rate", type=float, default=5000, help="open-loop arrivals/s")
    parser.add_argument("--windows", default="0,0.002", help="group-commit windows, seconds")
    parser.add_argument("--dir", default=None, help="where to put the files (default: /tmp)")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(args))
