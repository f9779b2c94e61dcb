"""Loop metrics expose exactly what prometheus-client's own Counter and Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from mxpress.observe.loop_metrics import LoopCollector, LoopCounter, LoopHistogram
from mxpress.observe.metrics import PHASE_BUCKETS


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text format, without the _created samples only prometheus-client's own have."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_same_exposition_as_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    their_hist = Histogram(
        "t_seconds", "Doc", ["phase", "domain"], buckets=PHASE_BUCKETS, registry=theirs
    )
    their_count = Counter("t_events", "Doc", ["kind"], registry=theirs)
    our_hist = LoopHistogram("t_seconds", "Doc", ["phase", "domain"], PHASE_BUCKETS)
    our_count = LoopCounter("t_events", "Doc", ["kind"])
    ours.register(LoopCollector([our_hist, our_count]))

    rng = random.Random(7)
    # Every bound exactly (a value equal to a bound is in that bucket), around it, beyond.
    values = [*PHASE_BUCKETS, *(b * 1.000001 for b in PHASE_BUCKETS), 0.0, 1e-9, 61.0, 1e9]
    values += [rng.expovariate(100) for _ in range(2000)]
    for n, value in enumerate(values):
        labels = (rng.choice(["dns", "connect", 'we"ird\\']), rng.choice(["a.test", "other"]))
        their_hist.labels(*labels).observe(value)
        our_hist.observe(labels, value)
        kind = ("new", "reused")[n % 2]
        their_count.labels(kind).inc(n % 3)
        our_count.inc((kind,), n % 3)

    assert exposition(ours) == exposition(theirs)
    assert sum(1 for line in exposition(ours) if line.startswith("t_seconds_bucket")) == 6 * 19


def test_a_scrape_copies_what_the_loop_keeps_changing() -> None:
    hist = LoopHistogram("h_seconds", "Doc", ["phase"], (0.1, 1.0))
    hist.observe(("a",), 0.5)
    (family,) = [hist.family()]
    hist.observe(("a",), 0.05)  # after the scrape: not in the family already built
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("h_seconds_bucket", "0.1")] == 0
    assert samples[("h_seconds_bucket", "1.0")] == 1
    assert samples[("h_seconds_count", None)] == 1 and samples[("h_seconds_sum", None)] == 0.5
