"""Per-host connect backoff: a failing host is not hammered.

After a failed connect, a host is closed for a delay that doubles with each failure (from
`initial` up to `maximum`, shortened by up to 10 % of jitter so that many pools do not
retry in step). While closed, connecting fails fast so the caller tries the next MX host.
When the delay has passed, one trial connect is let through at a time; its success
forgets the failures, its failure extends the backoff.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from mxpress.errors import ConfigError, ConnectError, LocalProtocolError

Clock = Callable[[], float]
HostPort = tuple[str, int]

JITTER = 0.1


@dataclass(slots=True)
class _HostState:
    failures: int
    until: float
    last_error: str
    trial_running: bool = False


def counts_as_host_failure(exc: BaseException) -> bool:
    """Failures that say something about the host. Cancellation, our own bad input and
    local refusals to send do not."""
    return isinstance(exc, Exception) and not isinstance(exc, ConfigError | LocalProtocolError)


class Backoff:
    """Failure table of (host, port) -> backoff state, on an injected clock."""

    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._initial = initial
        self._maximum = maximum
        self._clock = clock
        self._rng = rng
        self._hosts: dict[HostPort, _HostState] = {}

    def check(self, host: HostPort) -> None:
        """Raise `ConnectError` if a connect to `host` must not be tried now."""
        state = self._hosts.get(host)
        if state is None:
            return
        now = self._clock()
        if now < state.until:
            raise ConnectError(
                f"{_address(host)} is in backoff until {state.until:.3f} (monotonic; "
                f"{state.until - now:.1f} s from now), after {_failures(state.failures)} "
                f"(last: {state.last_error}); try the next MX host",
                host=_address(host),
                phase="connect",
            )
        if state.trial_running:
            raise ConnectError(
                f"{_address(host)} is in backoff after {_failures(state.failures)}: a trial "
                f"connection is in progress (last error: {state.last_error}); try the next "
                "MX host",
                host=_address(host),
                phase="connect",
            )

    def begin(self, host: HostPort) -> bool:
        """Clear a connect attempt, or raise `ConnectError` if the host is in backoff.

        Returns True when the attempt is the single trial after a backoff: the caller must
        then report its outcome with `success` or `failure(..., trial=True)`.
        """
        self.check(host)
        state = self._hosts.get(host)
        if state is None:
            return False
        state.trial_running = True
        return True

    def success(self, host: HostPort) -> None:
        self._hosts.pop(host, None)

    def failure(self, host: HostPort, exc: BaseException, *, trial: bool) -> None:
        """Account a finished connect attempt that raised `exc`."""
        state = self._hosts.get(host)
        if trial and state is not None:
            state.trial_running = False
        if not counts_as_host_failure(exc):
            return
        now = self._clock()
        if state is None:
            state = self._hosts[host] = _HostState(failures=0, until=now, last_error="")
        elif now < state.until:
            # Connects that were already in flight when the host failed: one outage, one
            # step up the delay ladder, not one per parallel connection.
            state.last_error = _describe(exc)
            return
        state.failures += 1
        state.last_error = _describe(exc)
        state.until = now + self.delay(state.failures)

    def delay(self, failures: int) -> float:
        """Backoff after `failures` consecutive failures (jittered)."""
        base = min(self._maximum, self._initial * 2.0 ** min(failures - 1, 62))
        return base * (1.0 - JITTER * self._rng.random())

    def prune(self) -> None:
        """Forget hosts whose backoff ended long ago (and which nobody retried)."""
        horizon = self._clock() - self._maximum
        stale = [h for h, s in self._hosts.items() if s.until < horizon and not s.trial_running]
        for host in stale:
            del self._hosts[host]

    def __len__(self) -> int:
        return len(self._hosts)


def _address(host: HostPort) -> str:
    name, port = host
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def _failures(n: int) -> str:
    return f"{n} connect failure" + ("" if n == 1 else "s")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
