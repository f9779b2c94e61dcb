"""When to try a deferred recipient again, and when to give up on a message.

Defaults follow Postfix (minimal_backoff_time 300 s, maximal_backoff_time 4000 s,
maximal_queue_lifetime 5d shortened to 2d as in the original study,
bounce_queue_lifetime 1d, delay_warning_time off). The delay doubles per attempt and is
jittered so that recipients deferred together (one site down) do not all come back in the
same second.
"""

from __future__ import annotations

import math
import random

from mxpress.errors import ConfigError


class RetryPolicy:
    """Exponential backoff with jitter, and queue lifetimes (all in seconds).

    `next_delay(n)` after the n-th failed attempt is `first_retry * factor**(n-1)`, capped
    at `max_backoff`, then multiplied by a random factor in `[1 - jitter, 1 + jitter]`.
    """

    __slots__ = (
        "_rng",
        "bounce_queue_lifetime",
        "delay_warning",
        "factor",
        "first_retry",
        "jitter",
        "max_backoff",
        "max_queue_lifetime",
    )

    def __init__(
        self,
        first_retry: float = 300.0,
        max_backoff: float = 4000.0,
        factor: float = 2.0,
        jitter: float = 0.1,
        max_queue_lifetime: float = 2 * 86400.0,
        bounce_queue_lifetime: float = 86400.0,
        delay_warning: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (
            ("first_retry", first_retry),
            ("max_backoff", max_backoff),
            ("factor", factor),
            ("jitter", jitter),
            ("max_queue_lifetime", max_queue_lifetime),
            ("bounce_queue_lifetime", bounce_queue_lifetime),
            ("delay_warning", delay_warning),
        ):
            _number(name, value)
        _check("first_retry", first_retry, first_retry > 0, "must be > 0 seconds")
        _check(
            "max_backoff",
            max_backoff,
            max_backoff >= first_retry,
            f"must be >= first_retry ({first_retry:g} s)",
        )
        _check("factor", factor, factor >= 1, "must be >= 1 (1 = no growth)")
        _check("jitter", jitter, 0 <= jitter < 1, "must be in [0, 1) (0.1 = ±10%)")
        _check(
            "max_queue_lifetime",
            max_queue_lifetime,
            max_queue_lifetime >= 0,
            "must be >= 0 seconds (0 = bounce after the first failure)",
        )
        _check(
            "bounce_queue_lifetime",
            bounce_queue_lifetime,
            bounce_queue_lifetime >= 0,
            "must be >= 0 seconds",
        )
        _check(
            "delay_warning",
            delay_warning,
            delay_warning >= 0,
            "must be >= 0 seconds (0 = never warn)",
        )
        self.first_retry = float(first_retry)
        self.max_backoff = float(max_backoff)
        self.factor = float(factor)
        self.jitter = float(jitter)
        self.max_queue_lifetime = float(max_queue_lifetime)
        self.bounce_queue_lifetime = float(bounce_queue_lifetime)
        self.delay_warning = float(delay_warning)
        self._rng = rng if rng is not None else random.Random()

    def base_delay(self, attempts: int) -> float:
        """The un-jittered delay after `attempts` failed attempts (1 = the first)."""
        steps = max(attempts, 1) - 1
        # Compare in log space: factor**steps overflows a float long before attempts do.
        if self.factor == 1 or steps * math.log(self.factor) < math.log(
            self.max_backoff / self.first_retry
        ):
            return min(self.first_retry * self.factor**steps, self.max_backoff)
        return self.max_backoff

    def next_delay(self, attempts: int) -> float:
        """Seconds to wait before the next try, after `attempts` failed attempts."""
        base = self.base_delay(attempts)
        if self.jitter == 0:
            return base
        return base * (1 + self.jitter * (2 * self._rng.random() - 1))

    def lifetime(self, is_bounce: bool) -> float:
        return self.bounce_queue_lifetime if is_bounce else self.max_queue_lifetime

    def expired(self, created_at: float, now: float, is_bounce: bool) -> bool:
        """True when a message has been queued for its whole lifetime: bounce it."""
        return now - created_at >= self.lifetime(is_bounce)

    def warns(self, created_at: float, now: float, is_bounce: bool) -> bool:
        """True when a message still undelivered is old enough for a delay warning
        (Postfix's delay_warning_time; never for a bounce, never when 0)."""
        return self.delay_warning > 0 and not is_bounce and now - created_at >= self.delay_warning

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(first_retry={self.first_retry:g}, max_backoff={self.max_backoff:g}, "
            f"factor={self.factor:g}, jitter={self.jitter:g}, "
            f"max_queue_lifetime={self.max_queue_lifetime:g}, "
            f"bounce_queue_lifetime={self.bounce_queue_lifetime:g}, "
            f"delay_warning={self.delay_warning:g})"
        )


def _number(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or math.isinf(value)
    ):
        raise ConfigError(f"RetryPolicy.{name} must be a finite number, got {value!r}")


def _check(name: str, value: float, ok: bool, rule: str) -> None:
    if not ok:
        raise ConfigError(f"RetryPolicy.{name} {rule}, got {value!r}")
