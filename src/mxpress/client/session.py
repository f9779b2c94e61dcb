"""`Session`: one SMTP client session driven over a transport.

Setup (connect, banner, EHLO, STARTTLS, EHLO, AUTH) is sequential by nature; the
transactions are planned by the sans-IO `TransactionEngine`, which pipelines them.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TypeVar

from mxpress.client.timeouts import Timeouts
from mxpress.errors import (
    AuthenticationError,
    ConfigError,
    MxpressError,
    RemoteProtocolError,
    TLSError,
    TransportError,
    error_for_reply,
)
from mxpress.protocol import commands
from mxpress.protocol.client import Outgoing, TransactionEngine, TransactionResult
from mxpress.protocol.extensions import HELO_CAPABILITIES, Capabilities, parse_ehlo
from mxpress.protocol.replies import Reply, ReplyParser
from mxpress.protocol.sasl import choose_mechanism
from mxpress.transport.connection import Stream, open_connection
from mxpress.transport.tls import TLSInfo, TLSSessionStore


class TLSMode(StrEnum):
    NONE = "none"  # never STARTTLS
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered
    REQUIRED = "required"  # STARTTLS or fail
    IMPLICIT = "implicit"  # TLS from the first byte (port 465)

    @classmethod
    def parse(cls, value: str | TLSMode) -> TLSMode:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ConfigError(f"tls must be one of {allowed}; got {value!r}") from None


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Everything that decides how a session is set up (and which pool it may join)."""

    host: str
    port: int = 25
    tls: TLSMode = TLSMode.OPPORTUNISTIC
    verify: bool = True
    cafile: str | None = None
    server_hostname: str | None = None  # SNI and certificate name; default: host
    username: str | None = None
    password: str | None = None
    auth_mechanism: str | None = None
    allow_plaintext_auth: bool = False
    local_hostname: str | None = None
    source_address: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)

    @property
    def tls_name(self) -> str | None:
        name = self.server_hostname or self.host
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return name
        return None if self.server_hostname is None and not self.verify else name


Clock = Callable[[], float]
_T = TypeVar("_T")


class Session:
    """An established SMTP session. Build it with `mxpress.connect(...)`."""

    def __init__(
        self,
        stream: Stream,
        options: SessionOptions,
        *,
        tls_store: TLSSessionStore | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        self._stream = stream
        self.options = options
        self._tls_store = tls_store
        self._clock = clock
        self._parser = ReplyParser()
        self._replies: deque[Reply] = deque()
        self._lock = asyncio.Lock()
        self._needs_rset = False
        self._closed = False
        self.capabilities: Capabilities = HELO_CAPABILITIES
        self.banner: Reply | None = None
        self.ehlo_reply: Reply | None = None
        self.tls_info: TLSInfo | None = None
        self.timings: dict[str, float] = {}
        self.created_at = clock()
        self.last_used = self.created_at
        self.messages_sent = 0
        self.uses = 0  # transaction runs (send / send_many calls) on this session
        # Set when a transaction run breaks the session: was any body already written?
        # False means nothing can have been delivered, so a retry elsewhere is safe.
        self.body_sent_before_failure = False
        self.last_incomplete: list[tuple[int, TransactionResult]] = []

    # -- properties ----------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._stream.peer

    @property
    def peer_ip(self) -> str | None:
        """The server's IP address (`host` is host:port as asked for: maybe a name)."""
        address = self._stream.remote_address
        return address[0] if address else None

    @property
    def tls_resumed(self) -> bool:
        return self.tls_info is not None and self.tls_info.resumed

    @property
    def closed(self) -> bool:
        return self._closed

    def is_usable(self) -> bool:
        """Reusable without a round trip: open, idle, and the server has said nothing."""
        return not self._closed and not self._lock.locked() and self._stream.is_usable()

    # -- setup -----------------------------------------------------------------------

    async def _setup(self) -> None:
        opts = self.options
        if opts.tls is TLSMode.IMPLICIT:
            await self._handshake()
        self.banner = await self._timed("banner", self._read_reply("banner"))
        if not self.banner.ok:
            raise error_for_reply(
                "server refused the session at greeting",
                self.banner,
                host=self.host,
                phase="banner",
            )
        await self._timed("ehlo", self._ehlo())
        if opts.tls in (TLSMode.OPPORTUNISTIC, TLSMode.REQUIRED) and self.tls_info is None:
            if self.capabilities.starttls:
                reply = await self._timed(
                    "starttls", self._command(commands.starttls(), "starttls")
                )
                if reply.code != 220:
                    if opts.tls is TLSMode.REQUIRED:
                        raise TLSError(
                            f"STARTTLS refused ({reply}) and TLS is required",
                            host=self.host,
                            phase="starttls",
                            reply=reply,
                        )
                else:
                    if self._replies or self._parser.pending:
                        # RFC 3207 §5 / CVE-2011-0411: nothing may follow 220 in plaintext.
                        raise RemoteProtocolError(
                            "server sent data after its STARTTLS reply (injection attempt?)",
                            host=self.host,
                            phase="starttls",
                        )
                    await self._handshake()
                    await self._timed("ehlo2", self._ehlo())
            elif opts.tls is TLSMode.REQUIRED:
                raise TLSError(
                    "server does not offer STARTTLS and TLS is required",
                    host=self.host,
                    phase="ehlo",
                )
        if self.tls_info is not None:
            self._remember_tls_session()
        if opts.username is not None:
            await self._timed("auth", self._auth())

    async def _timed(self, phase: str, aw: Awaitable[_T]) -> _T:
        start = self._clock()
        try:
            return await aw
        finally:
            self.timings[phase] = self._clock() - start

    async def _handshake(self) -> None:
        opts = self.options
        assert self._tls_store is not None
        context = self._tls_store.context(verify=opts.verify, cafile=opts.cafile)
        name = opts.tls_name
        session = self._tls_store.get(opts.host, opts.port, name, context)
        start = self._clock()
        await self._stream.start_tls(context, name, session, opts.timeouts.tls)
        self.timings["tls"] = self._clock() - start
        self.tls_info = self._stream.tls_info
        # Anything read in plaintext must be forgotten (RFC 3207 §4.2).
        self._parser = ReplyParser()
        self._replies.clear()
        self.capabilities = HELO_CAPABILITIES

    def _remember_tls_session(self) -> None:
        # For TLS 1.3 the ticket arrives after the handshake; by now we have read the
        # EHLO reply that followed it, so the session object is resumable.
        tls = self._stream.tls
        if tls is None or self._tls_store is None:
            return
        opts = self.options
        context = self._tls_store.context(verify=opts.verify, cafile=opts.cafile)
        self._tls_store.put(opts.host, opts.port, opts.tls_name, context, tls.session)

    async def _ehlo(self) -> None:
        name = self._local_name()
        reply = await self._command(commands.ehlo(name), "ehlo")
        if reply.ok:
            self.ehlo_reply = reply
            self.capabilities = parse_ehlo(reply)
            return
        if reply.code in (500, 502, 504, 550):  # EHLO unknown: an RFC 821 server
            helo = await self._command(commands.helo(name), "ehlo")
            if helo.ok:
                self.ehlo_reply = helo
                self.capabilities = HELO_CAPABILITIES
                return
            reply = helo
        raise error_for_reply("EHLO refused", reply, host=self.host, phase="ehlo")

    def _local_name(self) -> str:
        if self.options.local_hostname:
            return self.options.local_hostname
        name = socket.gethostname()
        if "." in name:
            return name
        local = self._stream.local_address
        if local:
            ip = ipaddress.ip_address(local[0])
            return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"
        return "localhost"

    async def _auth(self) -> None:
        opts = self.options
        assert opts.username is not None
        if self.tls_info is None and not opts.allow_plaintext_auth:
            raise AuthenticationError(
                "refusing to send credentials over an unencrypted connection; use TLS, or "
                "allow_plaintext_auth=True if this link is trusted",
                host=self.host,
                phase="auth",
            )
        mechanism = choose_mechanism(
            self.capabilities.auth,
            opts.username,
            opts.password or "",
            mechanism=opts.auth_mechanism,
        )
        reply = await self._command(
            commands.auth(mechanism.name, mechanism.initial_response()), "auth"
        )
        for _ in range(8):  # no real mechanism needs more steps
            if reply.code != 334:
                break
            try:
                challenge = base64.b64decode(reply.text.strip(), validate=True)
            except ValueError:
                raise RemoteProtocolError(
                    f"AUTH challenge is not base64: {reply.text!r}", host=self.host, phase="auth"
                ) from None
            reply = await self._command(
                commands.auth_continue(mechanism.respond(challenge)), "auth"
            )
        if not reply.ok:
            raise AuthenticationError(
                f"authentication as {opts.username!r} with {mechanism.name} failed",
                host=self.host,
                phase="auth",
                reply=reply,
            )

    # -- reply I/O ----------------------------------------------------------------------

    async def _read_reply(self, phase: str) -> Reply:
        while not self._replies:
            data = await self._stream.read(self.options.timeouts.for_phase(phase), phase)
            self._replies.extend(self._parser.feed(data))
        return self._replies.popleft()

    async def _command(self, line: bytes, phase: str) -> Reply:
        self._stream.write(line)
        return await self._read_reply(phase)

    # -- transactions ------------------------------------------------------------------

    async def send(
        self,
        sender: str,
        recipients: str | Iterable[str],
        data: bytes,
        *,
        ret: str | None = None,
        envid: str | None = None,
        notify: Sequence[str] | None = None,
    ) -> TransactionResult:
        """Send one message. Returns the result if at least one recipient got it;
        raises `DeliveryError` (with every recipient's reply) if none did.

        ret, envid and notify are DSN parameters (RFC 3461), sent if the server has DSN.
        """
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        results = await self.send_many([Outgoing(sender, rcpts, data, ret, envid, notify)])
        result = results[0]
        if result.error is not None:
            raise result.error
        return result

    async def send_many(
        self, messages: Sequence[Outgoing | tuple[str, Sequence[str] | str, bytes]]
    ) -> list[TransactionResult]:
        """Send a stream of messages, pipelined across message boundaries.

        Per-message failures are in each result's `error`; only a broken session raises.
        """
        batch = [m if isinstance(m, Outgoing) else _outgoing(*m) for m in messages]
        async with self._lock:
            self._check_open()
            engine = TransactionEngine(
                batch, self.capabilities, needs_rset=self._needs_rset, host=self.host
            )
            self.uses += 1
            await self._run(engine)
            self._needs_rset = engine.needs_rset
            results = engine.results
            self.messages_sent += sum(1 for r in results if r.ok)
            self.last_used = self._clock()
            return results

    async def stream(
        self,
        source: Callable[[], Sequence[Outgoing]],
        on_result: Callable[[int, TransactionResult], None],
    ) -> None:
        """Send messages pulled from `source` (called whenever the pipeline can take the
        next one; an empty answer ends the stream once nothing is in flight), reporting
        each as `on_result(index, result)` the moment its final reply arrives. Indexes
        count the messages `source` returned, from 0. If the session breaks, the
        messages whose fate is unknown are in `last_incomplete`."""
        async with self._lock:
            self._check_open()

            def counted(index: int, result: TransactionResult) -> None:
                if result.ok:
                    self.messages_sent += 1
                on_result(index, result)

            engine = TransactionEngine(
                (),
                self.capabilities,
                needs_rset=self._needs_rset,
                host=self.host,
                source=source,
                on_result=counted,
            )
            self.uses += 1
            self.last_incomplete = []
            try:
                await self._run(engine)
            except BaseException:
                self.last_incomplete = engine.incomplete()
                raise
            self._needs_rset = engine.needs_rset
            self.last_used = self._clock()

    async def _run(self, engine: TransactionEngine) -> None:
        stream, parser, clock = self._stream, self._parser, self._clock
        timeouts = self.options.timeouts
        try:
            while True:
                flight = engine.outgoing(clock())
                if flight:
                    stream.write(flight)
                    if len(flight) > 65536:
                        await stream.drain()
                if engine.done:
                    return
                phase = engine.phase
                data = await stream.read(timeouts.for_phase(phase), phase)
                now = clock()
                for reply in parser.feed(data):
                    engine.receive(reply, now)
        except BaseException:
            self.body_sent_before_failure = engine.body_sent
            self.close()
            raise

    async def probe(self, sender: str, recipients: Sequence[str]) -> TransactionResult:
        """MAIL and RCPT without a message, then RSET: asks the server whether it would
        take mail for these recipients and delivers nothing (`mxpress trace`). Pipelined
        in one flight when the server offers PIPELINING."""
        smtputf8 = not (sender.isascii() and all(r.isascii() for r in recipients))
        lines = [commands.mail_from(sender, smtputf8=smtputf8)]
        lines += [commands.rcpt_to(r, smtputf8=smtputf8) for r in recipients]
        result = TransactionResult(sender, dict.fromkeys(recipients))
        async with self._lock:
            self._check_open()
            if self._needs_rset:
                lines.insert(0, commands.rset())
            lines.append(commands.rset())
            clock = self._clock
            try:
                start = clock()
                replies: list[Reply] = []
                if self.capabilities.pipelining:
                    self._stream.write(b"".join(lines))
                    for _ in lines:
                        replies.append(await self._read_reply("rcpt"))
                else:
                    for line in lines:
                        replies.append(await self._command(line, "rcpt"))
                result.timings["mail"] = clock() - start
            except BaseException:
                self.close()
                raise
            if self._needs_rset:
                replies.pop(0)
                self._needs_rset = False
            result.mail_reply = replies[0]
            for rcpt, reply in zip(recipients, replies[1:-1], strict=True):
                result.recipients[rcpt] = reply
            if not replies[0].ok:
                result.error = error_for_reply(
                    "sender refused", replies[0], host=self.host, phase="mail"
                )
            self.last_used = clock()
            return result

    # -- other commands ---------------------------------------------------------------

    async def noop(self) -> Reply:
        return await self._simple(commands.noop(), "noop")

    async def rset(self) -> Reply:
        reply = await self._simple(commands.rset(), "rset")
        self._needs_rset = False
        return reply

    async def _simple(self, line: bytes, phase: str) -> Reply:
        async with self._lock:
            self._check_open()
            try:
                reply = await self._command(line, phase)
            except BaseException:
                self.close()
                raise
            if reply.code == 421:
                self.close()
                raise error_for_reply(
                    "server is closing the session", reply, host=self.host, phase=phase
                )
            self.last_used = self._clock()
            return reply

    async def quit(self) -> None:
        """Say QUIT politely (briefly waiting for the reply) and close."""
        if self._closed:
            return
        try:
            async with asyncio.timeout(self.options.timeouts.quit):
                async with self._lock:
                    self._stream.write(commands.quit())
                    await self._read_reply("quit")
        except (MxpressError, TimeoutError, OSError):
            pass  # the server may hang up first; QUIT is a courtesy
        finally:
            self.close()

    def close(self) -> None:
        """Close without QUIT."""
        self._closed = True
        self._stream.close()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("session is closed", host=self.host)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.quit()
        else:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        tls = f" tls={self.tls_info.version}" if self.tls_info else ""
        return f"<Session {self.host} {state}{tls} sent={self.messages_sent}>"


def _outgoing(sender: str, recipients: Sequence[str] | str, data: bytes) -> Outgoing:
    rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
    return Outgoing(sender, rcpts, data)


async def establish(
    stream: Stream,
    options: SessionOptions,
    *,
    tls_store: TLSSessionStore | None = None,
    clock: Clock = time.perf_counter,
    connect_time: float = 0.0,
) -> Session:
    """Run session setup over an open stream; closes the stream if setup fails."""
    session = Session(
        stream,
        options,
        tls_store=tls_store if tls_store is not None else TLSSessionStore(),
        clock=clock,
    )
    session.timings["connect"] = connect_time
    try:
        await session._setup()
    except BaseException:
        session.close()
        raise
    return session


async def connect(
    host: str,
    port: int = 25,
    *,
    tls: str | TLSMode = TLSMode.OPPORTUNISTIC,
    username: str | None = None,
    password: str | None = None,
    timeout: float | Timeouts | None = None,
    verify: bool = True,
    cafile: str | None = None,
    server_hostname: str | None = None,
    auth_mechanism: str | None = None,
    allow_plaintext_auth: bool = False,
    local_hostname: str | None = None,
    source_address: str | None = None,
    tls_sessions: TLSSessionStore | None = None,
    clock: Clock = time.perf_counter,
) -> Session:
    """Open an SMTP session: connect, greet, EHLO, STARTTLS, EHLO, AUTH.

    Pass the same `tls_sessions` store to later calls to resume TLS sessions.
    """
    if not 0 < port < 65536:
        raise ConfigError(f"port must be 1-65535, got {port!r}")
    options = SessionOptions(
        host=host,
        port=port,
        tls=TLSMode.parse(tls),
        verify=verify,
        cafile=cafile,
        server_hostname=server_hostname,
        username=username,
        password=password,
        auth_mechanism=auth_mechanism,
        allow_plaintext_auth=allow_plaintext_auth,
        local_hostname=local_hostname,
        source_address=source_address,
        timeouts=Timeouts.coerce(timeout),
    )
    return await open_session(options, tls_sessions=tls_sessions, clock=clock)


async def open_session(
    options: SessionOptions,
    *,
    tls_sessions: TLSSessionStore | None = None,
    clock: Clock = time.perf_counter,
) -> Session:
    start = clock()
    stream = await open_connection(
        options.host,
        options.port,
        timeout=options.timeouts.connect,
        source_address=options.source_address,
    )
    return await establish(
        stream, options, tls_store=tls_sessions, clock=clock, connect_time=clock() - start
    )
