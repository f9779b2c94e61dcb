"""RetryPolicy: Postfix-like backoff with jitter, queue lifetimes, validated settings."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxpress.errors import ConfigError
from mxpress.queue import RetryPolicy


def test_default_backoff_doubles_from_five_minutes_up_to_4000_seconds() -> None:
    policy = RetryPolicy(jitter=0)
    assert [policy.next_delay(n) for n in range(1, 9)] == [
        300,
        600,
        1200,
        2400,
        4000,
        4000,
        4000,
        4000,
    ]


def test_jitter_stays_within_bounds_and_spreads() -> None:
    policy = RetryPolicy(rng=random.Random(7))
    for attempts, base in [(1, 300), (2, 600), (3, 1200), (4, 2400), (5, 4000), (50, 4000)]:
        delays = [policy.next_delay(attempts) for _ in range(200)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in delays)
        assert len(set(delays)) > 100  # actually jittered, not one value


@given(st.integers(min_value=-5, max_value=10**9))
def test_any_attempt_count_gives_a_bounded_delay(attempts: int) -> None:
    policy = RetryPolicy(factor=10.0, rng=random.Random(1))
    assert 300 * 0.9 <= policy.next_delay(attempts) <= 4000 * 1.1


def test_lifetimes() -> None:
    policy = RetryPolicy()
    assert not policy.expired(0, 2 * 86400 - 1, is_bounce=False)
    assert policy.expired(0, 2 * 86400, is_bounce=False)
    assert not policy.expired(0, 86400 - 1, is_bounce=True)
    assert policy.expired(0, 86400, is_bounce=True)
    assert RetryPolicy(max_queue_lifetime=0).expired(5, 5, is_bounce=False)


def test_delay_warning_is_off_by_default_and_never_for_a_bounce() -> None:
    assert not RetryPolicy().warns(0, 10 * 86400, is_bounce=False)
    policy = RetryPolicy(delay_warning=4 * 3600)
    assert not policy.warns(0, 4 * 3600 - 1, is_bounce=False)
    assert policy.warns(0, 4 * 3600, is_bounce=False)
    assert not policy.warns(0, 4 * 3600, is_bounce=True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"first_retry": 0}, "first_retry"),
        ({"first_retry": "300"}, "first_retry"),
        ({"max_backoff": 10}, "max_backoff"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": float("nan")}, "jitter"),
        ({"max_queue_lifetime": -1}, "max_queue_lifetime"),
        ({"bounce_queue_lifetime": float("inf")}, "bounce_queue_lifetime"),
        ({"max_backoff": True}, "max_backoff"),
        ({"delay_warning": -1}, "delay_warning"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"RetryPolicy\.{field} "):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
