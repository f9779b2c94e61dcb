"""Queue depth for the metrics, counted in the background.

`store.counts()` scans the whole queue (0.3 s at a million messages): run per scrape, a
few scrapers would keep a core busy. It runs every `interval` seconds instead, and the
gauges show the latest counts with their age.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mxpress.queue.store import QueueCounts

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class QueueDepth:
    """The latest queue counts, refreshed every `interval` seconds while started."""

    def __init__(
        self,
        counts: Callable[[], Awaitable[QueueCounts]],
        *,
        interval: float = 15.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._counts = counts
        self._interval = interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.latest: QueueCounts | None = None
        self.refreshed_at: float | None = None

    def age(self) -> float | None:
        """Seconds since the latest counts were taken (None: not yet)."""
        if self.refreshed_at is None:
            return None
        return max(0.0, self._clock() - self.refreshed_at)

    async def refresh(self) -> None:
        try:
            counts = await self._counts()
        except Exception as exc:  # the queue's trouble is reported elsewhere; say it once
            if not self._failing:
                logger.warning("queue depth: counting failed, keeping the last counts: %s", exc)
            self._failing = True
            return
        self._failing = False
        self.latest = counts
        self.refreshed_at = self._clock()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="queue-depth")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # unlike `await task`, keeps our own cancellation

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)
