# ruff: noqa: E402  (the build check runs before the possibly compiled modules load)
"""mxpress: a fast, reliable outbound e-mail delivery engine.

The hot path may be compiled by mypyc (setup.py, docs/ARCHITECTURE.md); a compiled module
whose source changed since is refused before any of it is imported.
"""

from pathlib import Path

from mxpress.compiled import check_fresh

check_fresh(Path(__file__).parent)

from mxpress.client import Session, SessionOptions, Timeouts, TLSMode, connect
from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    DeliveryError,
    DNSError,
    LocalProtocolError,
    MxpressError,
    PermanentDeliveryError,
    PoolTimeout,
    ProtocolError,
    RemoteProtocolError,
    TLSError,
    TransientDeliveryError,
    TransportError,
    TransportTimeout,
)
from mxpress.mailer import Mailer
from mxpress.message import build_message, to_bytes
from mxpress.pool import Pool
from mxpress.protocol.client import Outgoing, TransactionResult
from mxpress.protocol.extensions import Capabilities
from mxpress.protocol.replies import Reply
from mxpress.sync import SyncMailer, send
from mxpress.transport.tls import TLSSessionStore

__all__ = [
    "AuthenticationError",
    "Capabilities",
    "ConfigError",
    "ConnectError",
    "DNSError",
    "DeliveryError",
    "LocalProtocolError",
    "Mailer",
    "MxpressError",
    "Outcome",
    "Outgoing",
    "PermanentDeliveryError",
    "Pool",
    "PoolTimeout",
    "ProtocolError",
    "RecipientResult",
    "RemoteProtocolError",
    "Reply",
    "SendResult",
    "Session",
    "SessionOptions",
    "SyncMailer",
    "TLSError",
    "TLSMode",
    "TLSSessionStore",
    "Timeouts",
    "TransactionResult",
    "TransientDeliveryError",
    "TransportError",
    "TransportTimeout",
    "build_message",
    "connect",
    "send",
    "to_bytes",
]
