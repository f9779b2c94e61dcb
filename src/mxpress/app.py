"""The composition root: builds the objects a command or service needs. No module globals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a faster event loop), else the standard one."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(coro: Coroutine[Any, Any, _T], *, use_uvloop: bool = True) -> _T:
    """Run a coroutine to completion on a fresh event loop."""
    with asyncio.Runner(loop_factory=loop_factory() if use_uvloop else None) as runner:
        return runner.run(coro)
