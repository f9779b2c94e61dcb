"""A TCP byte stream for SMTP, with TLS layered in as a MemoryBIO codec.

Built on a bare `asyncio.Protocol` rather than StreamReader/StreamWriter: SMTP reads
"whatever has arrived" and the fewer layers between the socket and the reply parser, the
less each reply costs.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Protocol

from mxpress.errors import (
    ConnectError,
    ReadError,
    TLSError,
    TransportTimeout,
    WriteError,
)
from mxpress.transport.tls import TLSCodec, TLSInfo

# Happy eyeballs (RFC 8305): start the next address family after 250 ms.
HAPPY_EYEBALLS_DELAY = 0.25


class Stream(Protocol):
    """What client/ needs from a connection; the scripted test transport implements it too."""

    peer: str
    tls_info: TLSInfo | None

    @property
    def tls(self) -> TLSCodec | None: ...
    @property
    def local_address(self) -> tuple[str, int] | None: ...
    def write(self, data: bytes) -> None: ...
    async def read(self, timeout: float | None, phase: str) -> bytes: ...
    async def drain(self) -> None: ...
    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        session: ssl.SSLSession | None,
        timeout: float | None,
    ) -> TLSCodec: ...
    def is_usable(self) -> bool: ...
    def close(self) -> None: ...


class _Receiver(asyncio.Protocol):
    """Collects bytes and wakes one reader; tracks write flow control."""

    def __init__(self) -> None:
        self.buffer: list[bytes] = []
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection:
    """One TCP connection to an SMTP server; plain until `start_tls`."""

    def __init__(self, transport: asyncio.Transport, receiver: _Receiver, peer: str) -> None:
        self._transport = transport
        self._receiver = receiver
        self._tls: TLSCodec | None = None
        self.peer = peer
        self.tls_info: TLSInfo | None = None

    @property
    def local_address(self) -> tuple[str, int] | None:
        sockname = self._transport.get_extra_info("sockname")
        return (sockname[0], sockname[1]) if sockname else None

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise WriteError("connection is closed", host=self.peer)
        if self._tls is not None:
            data = self._tls.encrypt(data)
        self._transport.write(data)

    async def drain(self) -> None:
        receiver = self._receiver
        if receiver.error is not None or self._transport.is_closing():
            raise WriteError(f"connection lost: {receiver.error}", host=self.peer)
        if not receiver.paused:
            return
        receiver.drain_waiter = asyncio.get_running_loop().create_future()
        await receiver.drain_waiter

    # -- reading -------------------------------------------------------------------

    async def _read_raw(self, timeout: float | None, phase: str) -> bytes:
        receiver = self._receiver
        if not receiver.buffer:
            if receiver.eof:
                raise self._closed_error(phase)
            receiver.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await receiver.waiter
            except TimeoutError:
                raise TransportTimeout(
                    f"no reply within {timeout:g} s", host=self.peer, phase=phase
                ) from None
            finally:
                receiver.waiter = None
            if not receiver.buffer:
                raise self._closed_error(phase)
        buffer = receiver.buffer
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        return data

    async def read(self, timeout: float | None, phase: str) -> bytes:
        """Whatever the server has sent (decrypted), waiting up to `timeout` for some."""
        if self._tls is None:
            return await self._read_raw(timeout, phase)
        while True:
            plain, closed = self._tls.decrypt()
            out = self._tls.take_outgoing()  # e.g. a key update the server asked for
            if out:
                self._transport.write(out)
            if plain:
                return plain
            if closed:
                raise self._closed_error(phase)
            self._tls.feed(await self._read_raw(timeout, phase))

    def _closed_error(self, phase: str) -> ReadError:
        detail = f": {self._receiver.error}" if self._receiver.error else ""
        return ReadError(f"server closed the connection{detail}", host=self.peer, phase=phase)

    # -- TLS -----------------------------------------------------------------------

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        session: ssl.SSLSession | None,
        timeout: float | None,
    ) -> TLSCodec:
        """Run the TLS handshake over this connection; later reads/writes are encrypted."""
        if self._tls is not None:
            raise TLSError("TLS is already active", host=self.peer, phase="tls")
        try:
            codec = TLSCodec(context, server_hostname, session)
        except (ValueError, ssl.SSLError) as exc:
            raise TLSError(f"cannot start TLS: {exc}", host=self.peer, phase="tls") from exc
        try:
            async with asyncio.timeout(timeout):
                while not codec.handshake_step():
                    out = codec.take_outgoing()
                    if out:
                        self._transport.write(out)
                    codec.feed(await self._read_raw(None, "tls"))
        except TimeoutError:
            raise TransportTimeout(
                f"TLS handshake not done within {timeout:g} s", host=self.peer, phase="tls"
            ) from None
        except TLSError as exc:
            exc.host, exc.phase = self.peer, "tls"
            raise
        except ReadError as exc:
            raise TLSError(
                "server closed the connection during the TLS handshake", host=self.peer, phase="tls"
            ) from exc
        out = codec.take_outgoing()
        if out:
            self._transport.write(out)
        self._tls = codec
        self.tls_info = TLSInfo(codec.version, codec.cipher, codec.session_reused)
        return codec

    @property
    def tls(self) -> TLSCodec | None:
        return self._tls

    # -- state -----------------------------------------------------------------------

    def is_usable(self) -> bool:
        """False if the server closed, or sent something while we expected silence.

        An idle SMTP session has nothing to read; unread bytes (typically a 421 timeout
        notice) or EOF mean the session must not be reused. No round trip needed.
        """
        r = self._receiver
        return not (r.eof or r.buffer or r.error or self._transport.is_closing())

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()


async def open_connection(
    host: str,
    port: int,
    *,
    timeout: float | None,
    source_address: str | None = None,
) -> Connection:
    """Open a TCP connection (happy eyeballs across the host's addresses)."""
    loop = asyncio.get_running_loop()
    receiver = _Receiver()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: receiver,
                host,
                port,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
                local_addr=(source_address, 0) if source_address else None,
            )
    except TimeoutError:
        raise TransportTimeout(
            f"could not connect within {timeout:g} s", host=f"{host}:{port}", phase="connect"
        ) from None
    except (OSError, socket.gaierror) as exc:
        raise ConnectError(
            f"cannot connect: {exc.strerror or exc}", host=f"{host}:{port}", phase="connect"
        ) from exc
    assert isinstance(transport, asyncio.Transport)
    return Connection(transport, receiver, f"{host}:{port}")
