"""TLS as a codec over `ssl.MemoryBIO`, and a per-destination session store.

asyncio's start_tls cannot resume a session; `SSLContext.wrap_bio(..., session=...)` can.
So the connection owns the TLS state machine itself: encrypted bytes in, plain bytes out.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from dataclasses import dataclass

from mxpress.errors import ConfigError, TLSError


class TLSCodec:
    """Client-side TLS over two memory BIOs. Sans-IO: the connection moves the bytes."""

    __slots__ = ("_incoming", "_obj", "_outgoing", "handshake_done")

    def __init__(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=False,
            server_hostname=server_hostname,
            session=session,
        )
        self.handshake_done = False

    def handshake_step(self) -> bool:
        """Advance the handshake; True once complete. Send `take_outgoing()` after each step."""
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLCertVerificationError as exc:
            raise TLSError(f"certificate verification failed: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake failed: {exc.reason or exc}") from exc
        self.handshake_done = True
        return True

    def feed(self, data: bytes) -> None:
        self._incoming.write(data)

    def feed_eof(self) -> None:
        self._incoming.write_eof()

    def take_outgoing(self) -> bytes:
        return self._outgoing.read() if self._outgoing.pending else b""

    def encrypt(self, data: bytes) -> bytes:
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TLSError(f"TLS write failed: {exc.reason or exc}") from exc
        return self._outgoing.read()

    def decrypt(self) -> tuple[bytes, bool]:
        """All plaintext decodable from what was fed so far, and whether TLS was closed."""
        chunks = []
        closed = False
        while True:
            try:
                chunk = self._obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            except ssl.SSLError as exc:
                raise TLSError(f"TLS read failed: {exc.reason or exc}") from exc
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks), closed

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._obj.session

    @property
    def session_reused(self) -> bool:
        return self._obj.session_reused

    @property
    def version(self) -> str | None:
        return self._obj.version()

    @property
    def cipher(self) -> str | None:
        cipher = self._obj.cipher()
        return cipher[0] if cipher else None


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated, for results and traces."""

    version: str | None
    cipher: str | None
    resumed: bool


def make_client_context(*, verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
    """A client context: verification and hostname check ON unless `verify=False`."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {cafile!r}: {exc}") from exc
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TLSSessionStore:
    """TLS contexts and the last session per destination, so a reconnect resumes.

    One store per process (or per pool) is built by the caller and shared: resumption needs
    the same `SSLContext` object that made the session, so the store owns the contexts too.
    """

    def __init__(self, *, max_sessions: int = 4096) -> None:
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}
        self._sessions: OrderedDict[tuple[str, int, str | None, int], ssl.SSLSession] = (
            OrderedDict()
        )
        self._max = max_sessions

    def context(self, *, verify: bool = True, cafile: str | None = None) -> ssl.SSLContext:
        key = (verify, cafile)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = make_client_context(verify=verify, cafile=cafile)
        return context

    def get(
        self, host: str, port: int, sni: str | None, context: ssl.SSLContext
    ) -> ssl.SSLSession | None:
        key = (host, port, sni, id(context))
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def put(
        self,
        host: str,
        port: int,
        sni: str | None,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None,
    ) -> None:
        if session is None:
            return
        key = (host, port, sni, id(context))
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)
