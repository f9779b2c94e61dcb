"""mxpress: a fast, reliable outbound e-mail delivery engine."""

from mxpress.client import Session, SessionOptions, Timeouts, TLSMode, connect
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
from mxpress.message import build_message, to_bytes
from mxpress.protocol.client import Outgoing, TransactionResult
from mxpress.protocol.extensions import Capabilities
from mxpress.protocol.replies import Reply
from mxpress.transport.tls import TLSSessionStore

__all__ = [
    "AuthenticationError",
    "Capabilities",
    "ConfigError",
    "ConnectError",
    "DNSError",
    "DeliveryError",
    "LocalProtocolError",
    "MxpressError",
    "Outgoing",
    "PermanentDeliveryError",
    "PoolTimeout",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "Session",
    "SessionOptions",
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
    "to_bytes",
]
