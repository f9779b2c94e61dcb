"""`PoolConfig`: the pool's limits and timings, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from mxpress.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Limits and timings of a `Pool` (seconds are on the pool's clock). See `Pool`."""

    max_connections: int = 100
    max_per_destination: int = 10
    max_session_age: float = 300.0
    max_messages_per_session: int | None = None
    idle_timeout: float = 30.0
    noop_after: float = 10.0
    pool_timeout: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    reap_interval: float | None = None  # None: min(idle_timeout / 2, 5 s)

    def __post_init__(self) -> None:
        _check_count("max_connections", self.max_connections)
        _check_count("max_per_destination", self.max_per_destination)
        if self.max_messages_per_session is not None:
            _check_count("max_messages_per_session", self.max_messages_per_session)
        for name in (
            "max_session_age",
            "idle_timeout",
            "pool_timeout",
            "backoff_initial",
            "backoff_max",
        ):
            _check_seconds(name, getattr(self, name), zero_ok=False)
        _check_seconds("noop_after", self.noop_after, zero_ok=True)
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(
                f"backoff_max ({self.backoff_max!r}) must be at least backoff_initial "
                f"({self.backoff_initial!r})"
            )
        if self.reap_interval is not None:
            _check_seconds("reap_interval", self.reap_interval, zero_ok=False)

    @property
    def reap_every(self) -> float:
        """Seconds between background reaps."""
        if self.reap_interval is not None:
            return float(self.reap_interval)
        return min(self.idle_timeout / 2, 5.0)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")


def _check_seconds(name: str, value: object, *, zero_ok: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value  # NaN
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{name} must be a number of seconds {bound}, got {value!r}")
