"""The asyncio SMTP client: sessions over a transport, driving protocol/."""

from mxpress.client.session import Session, SessionOptions, TLSMode, connect, open_session
from mxpress.client.timeouts import Timeouts

__all__ = ["Session", "SessionOptions", "TLSMode", "Timeouts", "connect", "open_session"]
