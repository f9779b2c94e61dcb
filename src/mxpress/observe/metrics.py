"""Prometheus metrics of one relay, in a registry of its own (never prometheus-client's
global REGISTRY: two relays in one process, or a test after another, must not share).

    registry = CollectorRegistry()
    metrics = RelayMetrics(registry, top_domains=20)
    metrics.watch(pool=lambda: mailer.pool.stats, scheduler=lambda: scheduler.stats, ...)
    scheduler = Scheduler(..., observer=metrics.on_attempt)

Two kinds of metric:
- Events, fed by hooks: `on_accepted(via)` once a submission is stored, `on_attempt(...)`
  after each delivery attempt (phase histograms, recipient outcomes, sessions, TLS).
- Live state, read at scrape time from the objects that keep those counts anyway (pool,
  DNS cache, scheduler, submission listener, the cached queue depth): nothing to update on
  the hot path, and never out of step with what those objects report elsewhere.

Label sets are bounded: phases are the code's own; recipient domains are the first
`top_domains` distinct ones seen (a burst of junk domains cannot explode the series),
"other" for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mxpress.observe.loop_metrics import LoopCollector, LoopCounter, LoopHistogram

if TYPE_CHECKING:
    from mxpress.delivery.result import SendResult
    from mxpress.delivery.scheduler import SchedulerStats
    from mxpress.dns.cache import DNSStats
    from mxpress.observe.delivery_log import DeliveryLog
    from mxpress.observe.queue_depth import QueueDepth
    from mxpress.pool.stats import PoolStats
    from mxpress.queue.store import AttemptOutcome, QueuedMessage
    from mxpress.server.submission import SubmissionStats

__all__ = ["OTHER", "PHASE_BUCKETS", "DomainLabels", "RelayMetrics"]

# 0.1 ms (a cached DNS answer, a pool hit) to 60 s (a tarpitting server's timeout).
PHASE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
OTHER = "other"
VIAS = ("smtp", "http")
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f.:ipv]{1,60}\]")
_MAX_PHASE = 32


class DomainLabels:
    """Domain → label value: the first `limit` distinct domains keep their name, later
    ones (and anything that is not a plain domain) become "other"."""

    __slots__ = ("_known", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, domain: str) -> str:
        if domain in self._known:
            return domain
        if len(self._known) < self._limit and _DOMAIN.fullmatch(domain):
            self._known.add(domain)
            return domain
        return OTHER

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._known)


def domain_of(address: str) -> str:
    """The domain part, lower-cased (cheap: no IDNA; a U-label simply becomes "other")."""
    return address.rpartition("@")[2].lower()


@dataclass(slots=True)
class _Sources:
    """Where the live metrics come from; each is optional (a relay without DNS, ...)."""

    pool: Callable[[], PoolStats] | None = None
    dns: Callable[[], DNSStats] | None = None
    scheduler: Callable[[], SchedulerStats] | None = None
    in_flight: Callable[[], int] | None = None
    submission: Callable[[], SubmissionStats] | None = None
    queue: QueueDepth | None = None
    delivery_log: DeliveryLog | None = None


class RelayMetrics:
    """The relay's metrics; see the module doc. All hooks are cheap and never raise on
    odd input (an unknown phase name is still a bounded label: it comes from code)."""

    def __init__(self, registry: CollectorRegistry, *, top_domains: int = 20) -> None:
        self.registry = registry
        self.domains = DomainLabels(top_domains)
        self._phase = LoopHistogram(
            "mxpress_delivery_phase_seconds",
            "Time spent per delivery phase (dns, pool, connect, tls, ..., total) per attempt, "
            "by recipient domain (the first top_domains seen, then 'other')",
            ["phase", "domain"],
            PHASE_BUCKETS,
        )
        self._accepted = LoopCounter(
            "mxpress_messages_accepted",
            "Messages accepted (stored durably) by submission channel",
            ["via"],
        )
        self._recipients = LoopCounter(
            "mxpress_recipients",
            "Recipient outcomes of delivery attempts, by outcome and recipient domain",
            ["outcome", "domain"],
        )
        self._tls = LoopCounter(
            "mxpress_tls_handshakes",
            "TLS handshakes of delivery sessions: full, or resumed (one round trip less)",
            ["kind"],
        )
        self._sessions = LoopCounter(
            "mxpress_sessions",
            "Sessions used by delivery attempts: newly opened, or reused from the pool",
            ["kind"],
        )
        # Present from the start, so a rate() has a zero to start from.
        for counter, labels in (
            (self._accepted, VIAS),
            (self._tls, ("full", "resumed")),
            (self._sessions, ("new", "reused")),
        ):
            for label in labels:
                counter.inc((label,), 0)
        registry.register(
            LoopCollector(
                [self._phase, self._accepted, self._recipients, self._tls, self._sessions]
            )
        )
        self._sources = _Sources()
        registry.register(_LiveCollector(self._sources))

    # -- hooks ------------------------------------------------------------------------

    def on_accepted(self, via: str) -> None:
        """A message was stored (after the fsync): via "smtp" or "http"."""
        self._accepted.inc((via if via in VIAS else OTHER,))

    def on_attempt(
        self,
        message: QueuedMessage,
        result: SendResult,
        outcomes: Sequence[AttemptOutcome],
    ) -> None:
        """The scheduler's observer: one delivery attempt of `message` is recorded."""
        domains = self.domains
        first = domains(domain_of(message.recipients[0].recipient)) if message.recipients else OTHER
        observe = self._phase.observe
        for phase, seconds in result.timings.items():
            observe((phase[:_MAX_PHASE], first), seconds)
        for outcome in outcomes:
            self._recipients.inc((str(outcome.state), domains(domain_of(outcome.recipient))))
        if result.new_sessions:
            self._sessions.inc(("new",), result.new_sessions)
        if result.reused_sessions:
            self._sessions.inc(("reused",), result.reused_sessions)
        if result.tls_full:
            self._tls.inc(("full",), result.tls_full)
        if result.tls_resumed:
            self._tls.inc(("resumed",), result.tls_resumed)

    # -- live sources -----------------------------------------------------------------

    def watch(
        self,
        *,
        pool: Callable[[], PoolStats] | None = None,
        dns: Callable[[], DNSStats] | None = None,
        scheduler: Callable[[], SchedulerStats] | None = None,
        in_flight: Callable[[], int] | None = None,
        submission: Callable[[], SubmissionStats] | None = None,
        queue: QueueDepth | None = None,
        delivery_log: DeliveryLog | None = None,
    ) -> None:
        """Read these at scrape time (each call replaces only what it names)."""
        s = self._sources
        s.pool = pool or s.pool
        s.dns = dns or s.dns
        s.scheduler = scheduler or s.scheduler
        s.in_flight = in_flight or s.in_flight
        s.submission = submission or s.submission
        s.queue = queue or s.queue
        s.delivery_log = delivery_log or s.delivery_log


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, items: Iterable[tuple[str, float]]
) -> Metric:
    for label, value in items:
        family.add_metric([label], value)
    return family


class _LiveCollector(Collector):
    """Builds the live metrics from `_Sources` on each scrape."""

    def __init__(self, sources: _Sources) -> None:
        self._s = sources

    def describe(self) -> Iterable[Metric]:
        return []  # names are not known up front (sources come later); no clash checks

    def collect(self) -> Iterable[Metric]:
        s = self._s
        if s.pool is not None:
            yield from _pool_metrics(s.pool())
        if s.dns is not None:
            yield from _dns_metrics(s.dns())
        if s.scheduler is not None:
            yield from _scheduler_metrics(s.scheduler())
        if s.in_flight is not None:
            yield _gauge("mxpress_deliveries_in_flight", "Messages being delivered", s.in_flight())
        if s.submission is not None:
            yield from _submission_metrics(s.submission())
        if s.queue is not None:
            yield from _queue_metrics(s.queue)
        if s.delivery_log is not None:
            log = s.delivery_log
            yield _counter("mxpress_delivery_log_records", "Delivery log lines queued", log.records)
            yield _counter(
                "mxpress_delivery_log_dropped",
                "Delivery log lines dropped because the writer fell behind (slow disk)",
                log.dropped,
            )


def _pool_metrics(stats: PoolStats) -> Iterable[Metric]:
    t = stats.total
    yield _labelled(
        GaugeMetricFamily(
            "mxpress_pool_sessions", "Pooled delivery sessions by state", labels=["state"]
        ),
        [("active", t.active), ("idle", t.idle), ("connecting", t.connecting)],
    )
    yield _gauge("mxpress_pool_waiting", "Deliveries waiting for a pooled session", t.waiting)
    yield _gauge("mxpress_pool_destinations", "Destinations with pool state", len(stats))
    yield _counter("mxpress_pool_sessions_created", "Sessions opened by the pool", t.created)
    yield _counter(
        "mxpress_pool_sessions_reused", "Idle sessions handed out again by the pool", t.reused
    )
    yield _counter(
        "mxpress_pool_connect_failures",
        "Failed session opens (connect, TLS, greeting)",
        t.connect_failures,
    )
    yield _labelled(
        CounterMetricFamily(
            "mxpress_pool_sessions_closed",
            "Sessions closed by the pool, by reason",
            labels=["reason"],
        ),
        sorted(t.closed.items()),
    )


_DNS = {
    "hits": "mxpress_dns_cache_hits",
    "misses": "mxpress_dns_cache_misses",
    "negative_hits": "mxpress_dns_cache_negative_hits",
    "stale_served": "mxpress_dns_cache_stale_served",
    "joined": "mxpress_dns_joined",
    "upstream_queries": "mxpress_dns_upstream_queries",
    "errors": "mxpress_dns_errors",
    "refreshes": "mxpress_dns_refreshes",
}


def _dns_metrics(stats: DNSStats) -> Iterable[Metric]:
    values = stats.as_dict()
    for key, name in _DNS.items():
        yield _counter(
            name, f"DNS resolver: {key.replace('_', ' ')} (per name and type)", values[key]
        )


def _scheduler_metrics(stats: SchedulerStats) -> Iterable[Metric]:
    yield _counter("mxpress_delivery_attempts", "Delivery attempts recorded", stats.attempts)
    yield _counter(
        "mxpress_dsn_sent",
        "Delivery status notifications (bounces and delay warnings) queued",
        stats.dsn_sent,
    )
    yield _counter(
        "mxpress_delay_warnings",
        "Delay warnings queued (retry.delay_warning_time; once per message)",
        stats.delay_warnings,
    )
    yield _counter(
        "mxpress_recipients_expired",
        "Recipients bounced by the expiry sweep (queue lifetime over, no attempt due)",
        stats.expired,
    )
    yield _counter(
        "mxpress_scheduler_readied",
        "Messages that waited (leased, in memory) for a free slot of their domain",
        stats.readied,
    )
    yield _counter(
        "mxpress_scheduler_parked",
        "Messages put back for a while: their domain and its ready queue were full",
        stats.parked,
    )
    yield _counter("mxpress_scheduler_errors", "Scheduler errors (see the log)", stats.errors)


def _submission_metrics(stats: SubmissionStats) -> Iterable[Metric]:
    yield _counter(
        "mxpress_smtp_connections", "SMTP submission connections accepted", stats.connections
    )
    yield _gauge(
        "mxpress_smtp_connections_active", "SMTP submission connections open", stats.active
    )
    yield _counter(
        "mxpress_smtp_connections_passed_on",
        "SMTP connections accepted, then passed to a less busy worker before the greeting",
        stats.passed_on,
    )
    yield _counter(
        "mxpress_smtp_connections_taken_in",
        "SMTP connections another worker accepted and passed here",
        stats.taken_in,
    )
    yield _labelled(
        CounterMetricFamily(
            "mxpress_smtp_rejected", "SMTP submission refusals by reason", labels=["reason"]
        ),
        sorted(stats.rejected.items()),
    )


def _queue_metrics(depth: QueueDepth) -> Iterable[Metric]:
    counts = depth.latest
    if counts is None:
        return  # not counted yet: no gauge rather than a false zero
    yield _labelled(
        GaugeMetricFamily("mxpress_queue_messages", "Queued messages by state", labels=["state"]),
        sorted(counts.messages.items()),
    )
    yield _labelled(
        GaugeMetricFamily(
            "mxpress_queue_recipients", "Queued recipients by state", labels=["state"]
        ),
        sorted(counts.recipients.items()),
    )
    age = depth.age()
    if age is not None:
        yield _gauge(
            "mxpress_queue_counts_age_seconds",
            "Seconds since the queue gauges were counted (a background scan, not per scrape)",
            age,
        )
