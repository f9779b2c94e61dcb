"""A synchronous facade for scripts and web apps without an event loop.

`SyncMailer` runs one background thread with its own event loop and a `Mailer` in it;
any thread may call `send`: calls are handed to that loop, so sessions and DNS answers
are shared by every caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from mxpress.app import loop_factory
from mxpress.delivery.result import SendResult
from mxpress.errors import ConfigError
from mxpress.mailer import Mailer, Message

_T = TypeVar("_T")


class SyncMailer:
    """`Mailer` for code without asyncio. Same arguments as `Mailer`; thread-safe."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        factory = loop_factory() or asyncio.new_event_loop
        self._loop = factory()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mxpress", daemon=True)
        self._thread.start()
        self._closed = False

        async def build() -> Mailer:
            return Mailer(*args, **kwargs)

        self._mailer = self._call(build())

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        if self._closed:
            coro.close()
            raise ConfigError("this SyncMailer is closed")
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def send(
        self,
        message: Message,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> SendResult:
        return self._call(self._mailer.send(message, sender=sender, recipients=recipients), timeout)

    def send_many(self, messages: Iterable[Message], *, concurrency: int = 100) -> list[SendResult]:
        return self._call(self._mailer.send_many(list(messages), concurrency=concurrency))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._call(self._mailer.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncMailer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def send(
    message: Message,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    **mailer_options: Any,
) -> SendResult:
    """Send one message without an event loop (a Mailer for this one call)."""
    with SyncMailer(**mailer_options) as mailer:
        return mailer.send(message, sender=sender, recipients=recipients)
