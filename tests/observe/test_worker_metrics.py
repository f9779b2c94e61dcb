"""Every worker's metrics on worker 0's /metrics: one family per name, labelled by worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from mxpress.observe.worker_metrics import MetricsFileWriter, merged_exposition, metrics_file


def worker_registry(accepted: int, seconds: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("mxpress_messages_accepted", "Accepted", ["via"], registry=registry)
    counter.labels("smtp").inc(accepted)
    histogram = Histogram("mxpress_phase_seconds", "Phase", ["phase"], registry=registry)
    for s in seconds:
        histogram.labels("mail").observe(s)
    return registry


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_workers_files_are_merged_labelled_by_worker(tmp_path: Path) -> None:
    own = worker_registry(3, [0.01])
    for worker, accepted in ((1, 5), (2, 7)):
        writer = MetricsFileWriter(
            worker_registry(accepted, [0.02, 0.03]), metrics_file(tmp_path, worker), 60
        )
        writer.start()
        await writer.stop()  # writes the final counts
    text = merged_exposition(own, tmp_path, 3).decode()
    assert text.count("# TYPE mxpress_messages_accepted_total counter") == 1
    assert text.count("# TYPE mxpress_phase_seconds histogram") == 1
    accepted = samples(text, "mxpress_messages_accepted_total")
    assert accepted == {
        (("via", "smtp"), ("worker", "0")): 3.0,
        (("via", "smtp"), ("worker", "1")): 5.0,
        (("via", "smtp"), ("worker", "2")): 7.0,
    }
    counts = samples(text, "mxpress_phase_seconds_count")
    assert sorted(counts.values()) == [1.0, 2.0, 2.0]


async def test_a_worker_not_written_yet_is_left_out(tmp_path: Path) -> None:
    text = merged_exposition(worker_registry(1, []), tmp_path, 2).decode()
    assert samples(text, "mxpress_messages_accepted_total") == {
        (("via", "smtp"), ("worker", "0")): 1.0
    }


async def test_the_file_is_rewritten_while_running(tmp_path: Path) -> None:
    registry = worker_registry(1, [])
    path = metrics_file(tmp_path, 1)
    writer = MetricsFileWriter(registry, path, 0.05)
    writer.start()
    try:
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.02)
        assert "mxpress_messages_accepted_total" in path.read_text()
    finally:
        await writer.stop()
    assert not path.with_name(path.name + ".tmp").exists()
