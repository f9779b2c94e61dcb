"""On-demand statistical profiles of the running relay (pyinstrument).

    profiler = Profiler(max_seconds=60)
    html = await profiler.capture(10, "html")          # or "speedscope", "collapsed"

`capture` runs in the relay's event loop, so pyinstrument samples that loop's thread:
every task (submission, HTTP, scheduler, sessions), not only the caller's
(`async_mode="disabled"`: samples are not filtered by the awaiting task's context).
Worker threads (the queue's SQLite threads) are not sampled.

Nothing runs while no capture is asked for: pyinstrument is imported on the first capture
and its sampler is installed only for the capture's duration. One capture at a time
(a second one gets ProfilerBusy; the HTTP endpoints answer 409).
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from mxpress.errors import ConfigError, ProfilerBusy, ProfilerError

if TYPE_CHECKING:
    from pyinstrument.session import Session

__all__ = ["FORMATS", "Profiler", "collapsed"]

# format -> (media type, file extension)
FORMATS = {
    "html": ("text/html; charset=utf-8", "html"),
    "speedscope": ("application/json", "speedscope.json"),
    "collapsed": ("text/plain; charset=utf-8", "collapsed.txt"),
}
DEFAULT_MAX_SECONDS = 60.0


class Profiler:
    """Captures profiles on request; see the module doc."""

    def __init__(self, *, max_seconds: float = DEFAULT_MAX_SECONDS, interval: float = 0.001):
        if not max_seconds > 0:
            raise ConfigError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.max_seconds = max_seconds
        self.interval = interval
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def check(self, seconds: float, fmt: str) -> None:
        """Raise ConfigError if the request is not one `capture` takes."""
        if fmt not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        if not (math.isfinite(seconds) and 0 < seconds <= self.max_seconds):
            raise ConfigError(
                f"seconds must be more than 0 and at most {self.max_seconds:g}; got {seconds!r}"
            )

    async def capture(self, seconds: float, fmt: str = "html") -> bytes:
        """Sample the event loop's thread for `seconds`, then render the profile."""
        self.check(seconds, fmt)
        if self._busy:
            raise ProfilerBusy("a profile is being captured already; try again when it is done")
        try:
            import pyinstrument
        except ImportError:
            raise ProfilerError("profiling needs pyinstrument: pip install pyinstrument") from None
        self._busy = True
        try:
            profiler = pyinstrument.Profiler(interval=self.interval, async_mode="disabled")
            profiler.start(target_description=f"mxpress relay, {seconds:g} s")
            try:
                await asyncio.sleep(seconds)
            finally:
                session = profiler.stop()  # same thread as start(): the loop's
        finally:
            self._busy = False
        # Rendering a long profile takes a while of CPU: not on the loop.
        return await asyncio.to_thread(render, session, fmt)


def render(session: Session, fmt: str) -> bytes:
    from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer

    if fmt == "html":
        return str(HTMLRenderer().render(session)).encode("utf-8")
    if fmt == "speedscope":
        # show_all: speedscope is a timeline, so calls are not merged, and the default
        # filter (nodes under 1% of the total) would drop every event-loop callback.
        return str(SpeedscopeRenderer(show_all=True).render(session)).encode("utf-8")
    return collapsed(session).encode("utf-8")


def collapsed(session: Session) -> str:
    """Brendan Gregg's collapsed stacks ("root;...;leaf weight" per line, weight in
    microseconds): for flamegraph.pl, speedscope, inferno."""
    weights: dict[str, float] = {}
    for stack, seconds in session.frame_records:
        key = ";".join(_frame_name(f) for f in stack)
        weights[key] = weights.get(key, 0.0) + seconds
    lines = [f"{stack} {max(1, round(w * 1e6))}" for stack, w in weights.items()]
    return "\n".join(lines) + ("\n" if lines else "")


def _frame_name(identifier: str) -> str:
    # pyinstrument identifiers: "function\0file\0line", attributes after "\x01".
    function, _, rest = identifier.partition("\x01")[0].partition("\x00")
    path, _, line = rest.partition("\x00")
    where = path.rsplit("/", 2)
    short = "/".join(where[-2:]) if len(where) > 1 else path
    name = f"{function} ({short}:{line})" if line and line != "0" else f"{function} ({short})"
    return name.replace(";", ",").replace(" \n", " ")
