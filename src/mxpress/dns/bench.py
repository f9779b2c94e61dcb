"""Resolver benchmark: MX lookup latency per nameserver, cold and through the cache.

Used by `mxpress dns bench`. Lookups run one at a time (latency, not load), and
the rounds interleave the nameservers so a slow moment hurts them all alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mxpress.dns.cache import DNSCache
from mxpress.dns.resolver import Resolver
from mxpress.dns.upstream import NameserverSpec


@dataclass(slots=True)
class BenchResult:
    """Latencies of `mx()` lookups for one nameserver in one mode ("cold" or "cached")."""

    nameserver: str
    mode: str
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    upstream_queries: int = 0

    @property
    def lookups(self) -> int:
        return len(self.latencies_ms)

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.failures / self.lookups if self.lookups else 0.0

    def percentile(self, pct: float) -> float:
        """Nearest-rank percentile in ms (NaN when nothing was measured)."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, float | int | str | None]:
        def ms(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {
            "nameserver": self.nameserver,
            "mode": self.mode,
            "lookups": self.lookups,
            "upstream_queries": self.upstream_queries,
            "failures": self.failures,
            "loss_pct": round(self.loss_pct, 2),
            "min_ms": ms(self.percentile(0)),
            "p50_ms": ms(self.percentile(50)),
            "p95_ms": ms(self.percentile(95)),
            "p99_ms": ms(self.percentile(99)),
            "max_ms": ms(self.percentile(100)),
        }


def read_domains(path: str) -> list[str]:
    """Domains from a file: one per line; blank lines and `#` comments are skipped."""
    with open(path, encoding="utf-8") as fh:
        lines = (line.split("#", 1)[0].strip() for line in fh)
        return [line for line in lines if line]


async def run_bench(
    nameservers: Sequence[NameserverSpec | None],
    domains: Sequence[str],
    *,
    rounds: int = 3,
    dns_timeout: float = 2.0,
    lifetime: float = 5.0,
) -> list[BenchResult]:
    """Benchmark each nameserver (None = the system's); results cold first, then cached."""
    resolvers: list[Resolver] = []
    cold: list[BenchResult] = []
    cached: list[BenchResult] = []
    for spec in nameservers:
        resolver = Resolver(
            None if spec is None else [spec],
            timeout=dns_timeout,
            lifetime=lifetime,
            attempts=1,  # a retry would hide the loss we want to see
            cache=DNSCache(),
        )
        label = "system" if spec is None else str(spec)
        resolvers.append(resolver)
        cold.append(BenchResult(label, "cold"))
        cached.append(BenchResult(label, "cached"))
    for mode, results in (("cold", cold), ("cached", cached)):
        for _ in range(rounds):
            for resolver, result in zip(resolvers, results, strict=True):
                before = resolver.stats.upstream_queries
                for domain in domains:
                    start = time.perf_counter()
                    route = await resolver.mx(
                        domain, raise_errors=False, use_cache=mode == "cached"
                    )
                    result.latencies_ms.append((time.perf_counter() - start) * 1000.0)
                    # A definite answer (even NXDOMAIN) is a success; only timeouts and
                    # server failures count as loss.
                    if route.error is not None and route.error.is_transient:
                        result.failures += 1
                result.upstream_queries += resolver.stats.upstream_queries - before
    return cold + cached
