"""How fast each busy recipient domain's deliveries end, and so how long a message that
found the domain and its ready queue full should be parked: about as long as that queue
takes to drain, never longer than `park_seconds` (nor when the pace is unknown)."""

from __future__ import annotations

from collections.abc import Callable

_MIN_PARK = 0.01  # seconds: a parked message is never due again at once
_PACED = 4096  # domains whose delivery pace is remembered


class DomainPace:
    def __init__(self, park_seconds: float, monotonic: Callable[[], float]) -> None:
        self._park = park_seconds
        self._monotonic = monotonic
        # Per busy domain: when its last delivery ended; per recent domain: the smoothed
        # gap between endings (seconds).
        self._last_end: dict[str, float] = {}
        self._gap: dict[str, float] = {}

    def ended(self, domain: str, count: int, *, still_busy: bool) -> None:
        """`count` deliveries to `domain` ended together (each counts for a share of the
        time since the last ending). Learned only while the domain stays busy: a gap that
        spans an idle spell says nothing about its pace. The gaps outlive the busy spell
        (the next burst starts informed), for the latest `_PACED` domains."""
        now = self._monotonic()
        last = self._last_end.pop(domain, None)
        if last is not None:
            previous = self._gap.pop(domain, None)
            gap = (now - last) / count
            self._gap[domain] = gap if previous is None else 0.8 * previous + 0.2 * gap
            if len(self._gap) > _PACED:
                del self._gap[next(iter(self._gap))]  # the least recently updated
        if still_busy:
            self._last_end[domain] = now

    def park_time(self, domain: str, waiting: int) -> float:
        """Seconds for `waiting` messages ahead to drain at the domain's pace."""
        gap = self._gap.get(domain)
        if gap is None:
            return self._park
        return min(self._park, max(_MIN_PARK, waiting * gap))
