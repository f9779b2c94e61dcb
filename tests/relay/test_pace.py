"""A domain's delivery pace and the park time it gives (delivery/pace.py)."""

from __future__ import annotations

import pytest

from mxpress.delivery.pace import DomainPace


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unknown_pace_parks_for_park_seconds_then_the_queue_drain_time() -> None:
    ticks = Ticks()
    pace = DomainPace(5.0, ticks)
    assert pace.park_time("a.test", 10) == 5.0  # nothing learned yet
    pace.ended("a.test", 1, still_busy=True)
    ticks.now += 0.02
    pace.ended("a.test", 4, still_busy=True)  # four ended together: 5 ms each
    assert pace.park_time("a.test", 10) == pytest.approx(0.05)
    assert pace.park_time("a.test", 1) == 0.01  # never due again at once
    assert pace.park_time("a.test", 10_000) == 5.0  # never longer than park_seconds
    assert pace.park_time("b.test", 10) == 5.0  # each domain its own


def test_an_idle_spell_teaches_nothing_and_the_pace_is_smoothed() -> None:
    ticks = Ticks()
    pace = DomainPace(5.0, ticks)
    pace.ended("a.test", 1, still_busy=True)
    ticks.now += 0.01
    pace.ended("a.test", 1, still_busy=False)  # 10 ms; then the domain went idle
    ticks.now += 60  # a minute later a new burst: the idle minute is no gap
    pace.ended("a.test", 1, still_busy=True)
    assert pace.park_time("a.test", 100) == pytest.approx(1.0)
    ticks.now += 0.06
    pace.ended("a.test", 1, still_busy=True)  # 60 ms: moves the average a fifth of the way
    assert pace.park_time("a.test", 100) == pytest.approx(100 * (0.8 * 0.01 + 0.2 * 0.06))
