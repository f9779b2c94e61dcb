"""`Lease`: the `async with pool.session(options) as session:` context manager."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

from mxpress.client.session import Session, SessionOptions
from mxpress.errors import DeliveryError
from mxpress.pool.stats import CloseReason

if TYPE_CHECKING:
    from mxpress.pool.pool import Pool


class Lease:
    """Acquires on enter; on exit gives the session back, or retires it if the block
    raised (unless the server merely refused a message on an intact session)."""

    __slots__ = ("_options", "_pool", "_session")

    def __init__(self, pool: Pool, options: SessionOptions) -> None:
        self._pool = pool
        self._options = options
        self._session: Session | None = None

    async def __aenter__(self) -> Session:
        self._session = await self._pool.acquire(self._options)
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is None or not self._pool.holds(session):
            return  # released by hand inside the block
        if exc is None or (
            # A refusal that ends the session (421) has closed it; any other leaves the
            # session between transactions, ready for the next message.
            isinstance(exc, DeliveryError) and not session.closed and session.is_usable()
        ):
            self._pool.release(session)
        else:
            self._pool.retire(session, close_reason(exc, session))


def close_reason(exc: BaseException, session: Session | None = None) -> CloseReason:
    """Why a session is retired after `exc` interrupted its user."""
    if isinstance(exc, asyncio.CancelledError):
        return CloseReason.CANCELLED
    if session is not None and session.closed:
        return CloseReason.BROKEN
    return CloseReason.ERROR
