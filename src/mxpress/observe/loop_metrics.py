"""Counters and histograms updated on the event loop, exposed by a Collector at scrape time.

    attempts = LoopHistogram("mxpress_delivery_phase_seconds", "...", ("phase", "domain"), BUCKETS)
    attempts.observe(("connect", "example.com"), 0.0031)
    registry.register(LoopCollector([attempts]))

prometheus-client's own metric objects take a lock on every update, as they may be shared
by threads. These are updated only by the one event loop, ~10 times per delivered message,
so they are plain numbers. A scrape (possibly from another thread) copies them first:
copying a dict or a list is one step under the GIL, so it never sees one half-changed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LoopCollector", "LoopCounter", "LoopHistogram"]

Labels = tuple[str, ...]
# A bucket's "le" label as prometheus-client writes it (the function has no type hints).
_le_label: Callable[[float], str] = floatToGoString


class LoopCounter:
    """A counter family: label values → count."""

    __slots__ = ("_doc", "_labels", "_name", "values")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self._name = name
        self._doc = doc
        self._labels = list(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1) -> None:
        values = self.values
        values[labels] = values.get(labels, 0) + amount

    def family(self) -> Metric:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        for labels, value in dict(self.values).items():
            family.add_metric(list(labels), value)
        return family


class LoopHistogram:
    """A histogram family: label values → per-bucket counts and a sum. Buckets as
    prometheus-client's: a value goes in the first bucket whose bound is >= it."""

    __slots__ = ("_bounds", "_doc", "_labels", "_le", "_name", "_series")

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._doc = doc
        self._labels = list(labels)
        self._bounds = tuple(buckets)
        self._le = [_le_label(b) for b in self._bounds] + ["+Inf"]
        # label values → [count in bucket 0, ..., count above the last bound, sum]
        self._series: dict[Labels, list[float]] = {}

    def observe(self, labels: Labels, value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * (len(self._bounds) + 1) + [0.0]
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for labels, series in dict(self._series).items():
            *counts, total = series  # a copy
            buckets, running = [], 0.0
            for le, count in zip(self._le, counts, strict=True):
                running += count
                buckets.append((le, running))
            family.add_metric(list(labels), buckets, sum_value=total)
        return family


class LoopCollector(Collector):
    """Exposes loop metrics on each scrape."""

    def __init__(self, metrics: Iterable[LoopCounter | LoopHistogram]) -> None:
        self._metrics = list(metrics)

    def describe(self) -> Iterable[Metric]:
        return [m.family() for m in self._metrics]

    def collect(self) -> Iterable[Metric]:
        return [m.family() for m in self._metrics]
