"""One SMTP submission connection: aiosmtpd's protocol with the relay's rules.

aiosmtpd parses commands and runs STARTTLS; this module decides. It replaces AUTH (the
password check runs in a thread, failures are counted per connection) and DATA (the size
and header section are checked as lines arrive, and the reply waits for the queue's
fsync), and adds its checks to MAIL and RCPT through aiosmtpd's handler hooks.

The policy (who may relay, the limits, where mail goes) belongs to the listener
(`Listener`, implemented by `SubmissionServer`), so this module imports nothing from it.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
from base64 import b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mxpress.server.checks import (
    AUTH_REQUIRED,
    LINE_TOO_LONG,
    RELAY_DENIED,
    HeaderCheck,
    Refusal,
    RejectReason,
    check_recipient,
    check_sender,
    too_big,
)

logger = logging.getLogger(__name__)

SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, try again later\r\n"
_TIMER_EVERY = 1024  # DATA lines between idle-timer resets (a reset schedules a timer)


@dataclass(frozen=True, slots=True)
class Transaction:
    """What one connection hands the listener after a complete, checked DATA."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    auth_user: str | None
    peer: str
    tls: bool
    helo: str
    smtputf8: bool


class Listener(Protocol):
    """What a connection needs from the listener that owns it."""

    hostname: str
    max_message_size: int
    max_header_size: int
    max_recipients: int
    max_auth_failures: int
    require_tls_for_auth: bool
    implicit_tls: bool

    @property
    def auth_enabled(self) -> bool: ...
    @property
    def stopping(self) -> bool: ...
    def is_trusted(self, peer: str) -> bool: ...
    async def check_login(self, login: bytes, password: bytes) -> str | None: ...
    async def deliver(self, transaction: Transaction) -> str: ...
    def count(self, reason: RejectReason) -> None: ...
    def opened(self, conn: SubmissionConnection) -> None: ...
    def closed(self, conn: SubmissionConnection) -> None: ...


class _Hooks:
    """aiosmtpd handler hooks; `server` is the SubmissionConnection."""

    async def handle_EHLO(
        self,
        server: SubmissionConnection,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to an EHLO hook
        listener = server.listener
        lines = [r for r in responses if listener.auth_enabled or not r.startswith("250-AUTH")]
        lines[1:1] = ["250-PIPELINING", f"250-SIZE {listener.max_message_size}"]
        return lines

    async def handle_MAIL(
        self,
        server: SubmissionConnection,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        listener = server.listener
        refusal = AUTH_REQUIRED if not server.may_relay() else None
        refusal = refusal or check_sender(
            address,
            smtputf8=envelope.smtp_utf8,
            mail_options=mail_options,
            max_size=listener.max_message_size,
        )
        if refusal is not None:
            listener.count(refusal[0])
            return refusal[1]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SubmissionConnection,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        listener = server.listener
        if address in envelope.rcpt_tos:
            return "250 2.1.5 Ok (duplicate)"
        # Without a right to relay MAIL was refused already; checked again all the same.
        refusal = RELAY_DENIED if not server.may_relay() else None
        refusal = refusal or check_recipient(
            address,
            smtputf8=envelope.smtp_utf8,
            count=len(envelope.rcpt_tos),
            max_recipients=listener.max_recipients,
        )
        if refusal is not None:
            listener.count(refusal[0])
            return refusal[1]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_exception(self, error: Exception) -> str:
        logger.error("submission: unexpected error", exc_info=error)
        return "451 4.3.0 Local error in processing, try again later"


class SubmissionConnection(SMTP):
    """One client connection (aiosmtpd builds one protocol object per connection)."""

    def __dir__(self) -> list[str]:
        # aiosmtpd's SMTP.__init__ scans dir(self) (inspect.getmembers, evaluating every
        # attribute) for auth_* and smtp_* methods on EVERY connection: py-spy put that at
        # 25% of the relay's CPU under smtp-source load. Only those names matter to it.
        return list(_SCANNED_NAMES)

    def __init__(self, listener: Listener, **smtp_options: Any) -> None:
        super().__init__(
            _Hooks(),
            hostname=listener.hostname,
            ident="mxpress",
            data_size_limit=None,  # SIZE is announced and enforced here, with 5.3.4 codes
            enable_SMTPUTF8=True,
            # Implicit TLS is TLS from the first byte; aiosmtpd only knows STARTTLS.
            auth_require_tls=listener.require_tls_for_auth and not listener.implicit_tls,
            loop=asyncio.get_running_loop(),
            **smtp_options,
        )
        self.listener = listener
        self.auth_user: str | None = None
        self._auth_failures = 0
        self._in_command = False
        self._registered = False
        self._trusted: bool | None = None
        # Every command goes through run() (see _wrap), which closes the connection once
        # the listener is stopping and no transaction is open.
        self._smtp_methods = {name: self._wrap(m) for name, m in self._smtp_methods.items()}

    # --- connection state ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # called again after STARTTLS
        self.auth_user = None  # STARTTLS forgets AUTH (RFC 3207 §4.2), as the session does
        if not self._registered:
            self._registered = True
            self.listener.opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.listener.closed(self)

    @property
    def peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else ""

    @property
    def is_tls(self) -> bool:
        return self.listener.implicit_tls or self._tls_protocol is not None

    def may_relay(self) -> bool:
        """Never an open relay: only an authenticated session or a trusted network."""
        if self.session is not None and self.session.authenticated:
            return True
        if self._trusted is None:
            self._trusted = self.listener.is_trusted(self.peer_ip)
        return self._trusted

    def _wrap(
        self, method: Callable[[str | None], Awaitable[None]]
    ) -> Callable[[str | None], Awaitable[None]]:
        async def run(arg: str | None) -> None:
            self._in_command = True
            try:
                await method(arg)
            finally:
                self._in_command = False
            self.close_if_idle()

        return run

    def close_if_idle(self) -> None:
        """While stopping: close now unless a command or a transaction is in progress."""
        if not self.listener.stopping or self._in_command:
            return
        if self.transport is None or self.transport.is_closing():
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            return
        self._writer.write(SHUTDOWN_REPLY)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()

    # --- commands ----------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split "<path> params" as RFC 5321 writes it, keeping the path as sent.

        aiosmtpd parses it as an RFC 5322 header address, which drops comments and quotes
        "<a b@x>" into '"a b"@x': the hooks must judge what the client sent.
        """
        text = arg.lstrip()
        if text.startswith("<"):
            end = text.find(">")
            if end < 0:
                return None, None
            path, rest = text[1:end], text[end + 1 :]
            if rest and not rest.startswith(" "):
                return None, None
        else:
            path, _, rest = text.partition(" ")
        if path.startswith("@") and ":" in path:  # a source route: accept and ignore it
            path = path.partition(":")[2]  # (RFC 5321 §4.1.1.3, appendix C)
        return path, rest.strip()

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.listener.stopping:
            self.listener.count(RejectReason.SHUTTING_DOWN)
            await self.push(SHUTDOWN_REPLY.decode("ascii").rstrip())
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_MAIL(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None and self.envelope is not None
        if not self.session.extended_smtp or not self.listener.auth_enabled:
            await self.push("502 5.5.1 AUTH not available")
            return
        if self.listener.require_tls_for_auth and not self.is_tls:
            await self.push("538 5.7.11 Encryption required for requested authentication mechanism")
            return
        if self.session.authenticated:
            await self.push("503 5.5.1 Already authenticated")
            return
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 AUTH not allowed during a mail transaction")
            return
        args = (arg or "").split()
        if len(args) not in (1, 2):
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(args[1:])
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(args[1:])
        else:
            await self.push("504 5.5.4 Unrecognized authentication type")
            return
        if credentials is None:
            return  # a 501 was sent
        user = await self.listener.check_login(*credentials)
        if user is not None:
            self.session.authenticated = True
            self.auth_user = user
            await self.push("235 2.7.0 Authentication successful")
            return
        self._auth_failures += 1
        self.listener.count(RejectReason.AUTH_FAILED)
        if self._auth_failures < self.listener.max_auth_failures:
            await self.push("535 5.7.8 Authentication credentials invalid")
            return
        self.listener.count(RejectReason.AUTH_LOCKOUT)
        await self.push("421 4.7.0 Too many authentication failures, closing connection")
        if self.transport is not None:
            self.transport.close()

    async def _challenge(self, prompt: str) -> bytes | None:
        """One 334 round; None if the client cancelled or sent bad base64 (501 sent)."""
        got = await self.challenge_auth(prompt)
        return None if got is MISSING else got

    async def _decode(self, text: str) -> bytes | None:
        """An initial response given with AUTH ("=" is empty, RFC 4954 §4)."""
        if text == "=":
            return b""
        try:
            return b64decode(text, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def _auth_plain(self, initial: list[str]) -> tuple[bytes, bytes] | None:
        blob = await self._decode(initial[0]) if initial else await self._challenge("")
        if blob is None:
            return None
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Malformed PLAIN response")
            return None
        authzid, login, password = parts
        if authzid and authzid != login:  # acting for another user is not supported
            return login, b""
        return login, password

    async def _auth_login(self, initial: list[str]) -> tuple[bytes, bytes] | None:
        login = await self._decode(initial[0]) if initial else await self._challenge("Username:")
        if login is None:
            return None
        password = await self._challenge("Password:")
        return None if password is None else (login, password)

    # --- DATA --------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        assert self.session is not None and self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data, refusal = await self._receive()
        envelope = self.envelope
        self.envelope = self._create_envelope()  # the transaction ends, whatever comes next
        if refusal is not None:
            self.listener.count(refusal[0])
            await self.push(refusal[1])
            return
        transaction = Transaction(
            sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            data=data,
            auth_user=self.auth_user,
            peer=self.peer_ip,
            tls=self.is_tls,
            helo=self.session.host_name or "",
            smtputf8=envelope.smtp_utf8,
        )
        self._reset_timeout()  # the queue's fsync may take a while; not the client's fault
        try:
            queue_id = await self.listener.deliver(transaction)
        except Exception:
            logger.exception("submission: the queue refused a message from %s", self.peer_ip)
            self.listener.count(RejectReason.ACCEPT_FAILED)
            await self.push("451 4.3.0 Message not queued (local error), try again later")
            return
        await self.push(f"250 2.0.0 Ok: queued as {queue_id}")

    async def _receive(self) -> tuple[bytes, Refusal | None]:
        """Read the message up to the lone dot, unstuffing it and checking as it comes.

        After a refusal the rest is still read (and dropped) up to the dot, so the reply
        comes at the end of the data as RFC 5321 §4.2.5 expects.
        """
        limit = self.listener.max_message_size
        headers = HeaderCheck(self.listener.max_header_size)
        lines: list[bytes] = []
        size = 0
        refusal: Refusal | None = None
        at_line_start = True
        reader = self._reader
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
                whole, at_line_start = at_line_start, True
            except asyncio.LimitOverrunError as exc:
                # Longer than aiosmtpd's line limit (1001): take what is buffered, go on.
                line = await reader.read(exc.consumed)
                whole, at_line_start = False, False
                refusal = refusal or LINE_TOO_LONG
            if whole and line == b".\r\n":
                break
            if refusal is not None:
                if lines:
                    lines.clear()  # free a refused message at once; the rest is drained
                continue
            if whole and line[:1] == b".":
                line = line[1:]
            size += len(line)
            if size > limit:
                refusal = too_big(limit)
                continue
            if not headers.done:
                refusal = headers.feed(line)
                if refusal is not None:
                    continue
            lines.append(line)
            if len(lines) % _TIMER_EVERY == 0:
                self._reset_timeout()  # a big message is not an idle client
        refusal = refusal or headers.finish()
        return (b"", refusal) if refusal is not None else (b"".join(lines), None)


# The names aiosmtpd's per-connection scans look for (see SubmissionConnection.__dir__),
# computed once from the class: methods only, never instance state.
_SCANNED_NAMES = tuple(
    name
    for name in dir(SubmissionConnection)
    if name.startswith(("auth_", "smtp_")) and callable(getattr(SubmissionConnection, name))
)
