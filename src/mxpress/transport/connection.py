"""A TCP byte stream for SMTP, with TLS layered in as a MemoryBIO codec.

Built on a bare `asyncio.Protocol` rather than StreamReader/StreamWriter: SMTP reads
"whatever has arrived" and the fewer layers between the socket and the reply parser, the
less each reply costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from itertools import zip_longest
from typing import Protocol, cast

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
    @property
    def remote_address(self) -> tuple[str, int] | None: ...
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
        self.transport = cast(asyncio.Transport, transport)

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
        # One lazily re-armed timer per connection instead of a timer per read: a read
        # sets a deadline; the timer, when it fires, expires the read only if the
        # deadline has passed, else re-arms for it.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._quickack_once = False

    @property
    def local_address(self) -> tuple[str, int] | None:
        sockname = self._transport.get_extra_info("sockname")
        return (sockname[0], sockname[1]) if sockname else None

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The address actually connected to (`peer` may be a name)."""
        peername = self._transport.get_extra_info("peername")
        return (peername[0], peername[1]) if peername else None

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise WriteError("connection is closed", host=self.peer)
        if self._tls is not None:
            data = self._tls.encrypt(data)
        self._transport.write(data)
        if self._quickack_once:
            self._quickack_once = False
            self._quickack()

    def _quickack(self) -> None:
        # After a TLS 1.3 handshake the server writes its session tickets and then the
        # reply to our first command. With Nagle on the server and delayed ACKs here,
        # the reply waits ~40 ms for the ACK of the tickets (measured against Postfix:
        # 44 ms second EHLO; 0.5 ms with this). Ask the kernel to ACK at once.
        sock = self._transport.get_extra_info("socket")
        option = getattr(socket, "TCP_QUICKACK", None)
        if sock is not None and option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)

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
            loop = asyncio.get_running_loop()
            waiter = receiver.waiter = loop.create_future()
            if timeout is not None:
                self._arm(loop, loop.time() + timeout)
            try:
                await waiter
            except TimeoutError:
                raise TransportTimeout(
                    f"no reply within {timeout:g} s", host=self.peer, phase=phase
                ) from None
            finally:
                receiver.waiter = None
                self._deadline = None
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

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() <= deadline:
            return  # fires first, then re-arms for this deadline
        if timer is not None:
            timer.cancel()
        self._timer = loop.call_at(deadline, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return  # no read waiting: the timer stops here
        if loop.time() < deadline:
            self._timer = loop.call_at(deadline, self._on_timer, loop)
            return
        waiter = self._receiver.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

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
        self._quickack_once = True
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
        self._cancel_timer()
        self._transport.close()

    def abort(self) -> None:
        self._cancel_timer()
        self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def open_connection(
    host: str,
    port: int,
    *,
    timeout: float | None,
    source_address: str | None = None,
) -> Connection:
    """Open a TCP connection; a hostname's addresses race per happy eyeballs (RFC 8305)."""
    loop = asyncio.get_running_loop()
    peer = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            addresses = await _addresses(loop, host, port)
            transport, receiver = await _race(loop, addresses, port, source_address)
    except TimeoutError:
        raise TransportTimeout(
            f"could not connect within {timeout:g} s", host=peer, phase="connect"
        ) from None
    except OSError as exc:
        raise ConnectError(
            f"cannot connect: {exc.strerror or exc}", host=peer, phase="connect"
        ) from exc
    return Connection(transport, receiver, peer)


async def _addresses(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[str]:
    """IP literals as they are; names resolved and interleaved by family (IPv6 first)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v6 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET6]
    v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
    ordered: list[str] = []
    for pair in zip_longest(v6, v4):
        ordered.extend(a for a in pair if a is not None and a not in ordered)
    if not ordered:
        raise OSError(f"{host} has no IPv4 or IPv6 address")
    return ordered


async def _race(
    loop: asyncio.AbstractEventLoop, addresses: list[str], port: int, source: str | None
) -> tuple[asyncio.Transport, _Receiver]:
    """Start a connect to each address HAPPY_EYEBALLS_DELAY after the previous one (or as
    soon as it fails); the first to succeed wins and the others are cancelled."""

    async def attempt(address: str) -> tuple[asyncio.Transport, _Receiver]:
        receiver = _Receiver()
        transport, _ = await loop.create_connection(
            lambda: receiver, address, port, local_addr=(source, 0) if source else None
        )
        return transport, receiver

    if len(addresses) == 1:
        return await attempt(addresses[0])
    pending: set[asyncio.Task[tuple[asyncio.Transport, _Receiver]]] = set()
    errors: list[OSError] = []
    queue = list(addresses)
    try:
        while queue or pending:
            if queue:
                pending.add(asyncio.ensure_future(attempt(queue.pop(0))))
            done, pending = await asyncio.wait(
                pending,
                timeout=HAPPY_EYEBALLS_DELAY if queue else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            winners = [t for t in done if t.exception() is None]
            for task in winners[1:]:  # two finished at once: keep one, close the other
                task.result()[0].close()
            if winners:
                return winners[0].result()
            for task in done:
                exc = task.exception()
                if not isinstance(exc, OSError):
                    raise exc  # type: ignore[misc]
                errors.append(exc)
        raise (
            errors[-1]
            if len(errors) == 1
            else OSError("all addresses failed: " + "; ".join(str(e) for e in errors))
        )
    finally:
        for task in pending:
            task.cancel()
