"""DNS cache benchmarks (a script, not a test): prints numbers.

1. warm:   cached `Resolver.mx()` for a warm domain, per call (target p50 <= 20 us).
2. flight: 10,000 concurrent `mx()` calls over 100 domains against the in-process
           test server: upstream MX queries counted AT THE SERVER (target: exactly 100).
3. delay:  cold vs warm `mx()` with the server delaying every answer by 30 ms
           (target: a warm send pays 0 ms of DNS, 0 upstream queries).

Everything runs on 127.0.0.1 against `mxpress.dns.testing.FakeDNSServer`.

    .venv/bin/python bench/dns_cache.py [--calls 200000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from mxpress.dns import DNSCache, Resolver
from mxpress.dns.testing import FakeDNSServer


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def zone(server: FakeDNSServer, domains: int) -> None:
    server.add("warm.test", "MX", "10 mx1.warm.test", "20 mx2.warm.test", "20 mx3.warm.test")
    for i in (1, 2, 3):
        server.add(f"mx{i}.warm.test", "A", f"127.0.0.{i}")
        server.add(f"mx{i}.warm.test", "AAAA", f"::{i}")
    for i in range(domains):
        server.add(f"d{i}.test", "MX", f"10 mx.d{i}.test")
        server.add(f"mx.d{i}.test", "A", f"127.0.1.{i % 250 + 1}")


async def bench_warm(server: FakeDNSServer, calls: int) -> None:
    resolver = Resolver([server.address], cache=DNSCache())
    await resolver.mx("warm.test")
    clock = time.perf_counter_ns
    samples: list[float] = []
    for _ in range(calls):
        start = clock()
        await resolver.mx("warm.test")
        samples.append((clock() - start) / 1000.0)
    start = clock()
    for _ in range(calls):
        await resolver.mx("warm.test")
    mean = (clock() - start) / 1000.0 / calls
    print(
        f"warm   cached mx() (3 hosts, A+AAAA): p50 {pct(samples, 50):.2f} us  "
        f"p99 {pct(samples, 99):.2f} us  mean {mean:.2f} us  over {calls} calls  "
        f"(target p50 <= 20 us: {'ok' if pct(samples, 50) <= 20 else 'MISSED'})"
    )


async def bench_flight(server: FakeDNSServer, domains: int) -> None:
    server.queries.clear()
    server.fault(delay=0.005)  # answers take a moment, as they do over a network
    resolver = Resolver([server.address], cache=DNSCache(), timeout=5.0, lifetime=10.0)
    names = [f"d{i % domains}.test" for i in range(10_000)]
    start = time.perf_counter()
    routes = await asyncio.gather(*(resolver.mx(name) for name in names))
    elapsed = time.perf_counter() - start
    server.clear_faults()
    mx_queries = server.count(rdtype="MX")
    assert all(r.hosts[0].addresses for r in routes)
    print(
        f"flight 10000 concurrent mx() over {domains} domains: {mx_queries} upstream MX queries "
        f"at the server (target {domains}: {'ok' if mx_queries == domains else 'MISSED'}), "
        f"{server.count(rdtype='A')} A, {server.count(rdtype='AAAA')} AAAA; "
        f"{elapsed * 1000:.0f} ms in all"
    )


async def bench_delay(server: FakeDNSServer, rounds: int) -> None:
    server.fault(delay=0.030)
    cold: list[float] = []
    for _ in range(rounds):
        resolver = Resolver([server.address], cache=DNSCache(), timeout=1.0)
        start = time.perf_counter()
        await resolver.mx("warm.test")
        cold.append((time.perf_counter() - start) * 1000)
    asked = server.count()
    warm: list[float] = []
    for _ in range(1000):
        start = time.perf_counter()
        await resolver.mx("warm.test")
        warm.append((time.perf_counter() - start) * 1000)
    server.clear_faults()
    print(
        f"delay  server answers after 30 ms: cold mx() p50 {statistics.median(cold):.1f} ms "
        f"(MX, then A+AAAA of 3 hosts in parallel: 2 round trips); warm mx() p50 "
        f"{statistics.median(warm):.4f} ms, max {max(warm):.4f} ms, "
        f"upstream queries while warm: {server.count() - asked}"
    )


async def main(args: argparse.Namespace) -> None:
    async with FakeDNSServer() as server:
        zone(server, 100)
        await bench_warm(server, args.calls)
        await bench_flight(server, 100)
        await bench_delay(server, 5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
