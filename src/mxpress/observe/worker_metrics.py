"""The metrics of several relay workers on worker 0's one /metrics.

Each worker process has its own registry (its own counters, its own queue file). A
worker other than 0 writes its exposition to `data_dir/metrics.N.prom` every few
seconds (atomically: a rename) and when it stops; worker 0 serves its own registry and
those files as one exposition, every sample labelled `worker="N"`, one family per name.
Prometheus sums across workers with `sum without (worker) (...)`. A file is at most one
write interval old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


def metrics_file(data_dir: Path, worker: int) -> Path:
    return data_dir / f"metrics.{worker}.prom"


class MetricsFileWriter:
    """In worker N > 0: keep `metrics.N.prom` current."""

    def __init__(self, registry: CollectorRegistry, path: Path, interval: float) -> None:
        self._registry = registry
        self._path = path
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-file")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.write()  # the final counts

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.write()
            except OSError as exc:  # a full disk must not stop the relay
                logger.warning("metrics: cannot write %s: %s", self._path, exc)

    def write(self) -> None:
        text = generate_latest(self._registry)
        partial = self._path.with_name(self._path.name + ".tmp")
        partial.write_bytes(text)
        os.replace(partial, self._path)  # a reader sees the old file or the new one


def merged_exposition(registry: CollectorRegistry, data_dir: Path, workers: int) -> bytes:
    """Worker 0's registry and the files of workers 1..N-1, labelled by worker."""
    families: dict[str, Metric] = {}
    _add(families, registry.collect(), "0")
    for worker in range(1, workers):
        try:
            text = metrics_file(data_dir, worker).read_text()
        except FileNotFoundError:
            continue  # not written yet (the worker is starting)
        _add(families, text_string_to_metric_families(text), str(worker))
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Families(list(families.values())))
    return generate_latest(merged)


def _add(families: dict[str, Metric], found: Iterable[Metric], worker: str) -> None:
    for family in found:
        into = families.get(family.name)
        if into is None:
            into = families[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        for sample in family.samples:
            into.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
