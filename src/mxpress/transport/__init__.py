"""asyncio I/O: TCP connections, TLS as a MemoryBIO codec, and a scripted test stream."""

from mxpress.transport.connection import Connection, Stream, open_connection
from mxpress.transport.tls import TLSCodec, TLSInfo, TLSSessionStore

__all__ = ["Connection", "Stream", "TLSCodec", "TLSInfo", "TLSSessionStore", "open_connection"]
