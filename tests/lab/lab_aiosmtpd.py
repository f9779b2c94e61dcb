"""aiosmtpd on loopback: a programmable receiver (replies, drops, delays) for fault injection,
recording the envelopes it accepts."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.lab.lab_common import LabError, LabServer, check_loopback

__all__ = ["AiosmtpdServer", "RecordedMessage", "RecordingHandler", "aiosmtpd_server"]


@dataclass
class RecordedMessage:
    """One accepted transaction as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    peer: Any = None
    helo: str | None = None
    tls: bool = False
    auth_login: str | None = None


class RecordingHandler:
    """An aiosmtpd handler that records envelopes and replies as programmed.

    - rcpt_replies: {address (case-insensitive): "450 4.2.1 busy"} replaces the 250 for that
      RCPT; the address is then not part of the envelope.
    - mail_reply: reply to every MAIL FROM instead of 250 (e.g. "421 4.3.2 shutting down").
    - data_reply: reply at end of data instead of 250 (the message is then not recorded).
    - drop_on: commands ("MAIL", "RCPT", "DATA" = at end of data) after which the connection
      is cut without a reply; with `drop_with_reset` the client sees a TCP RST, else a FIN.
    - delays: {command: seconds} to wait before replying, for timeout tests.
    All attributes may be changed while the server runs."""

    def __init__(
        self,
        *,
        rcpt_replies: Mapping[str, str] | None = None,
        mail_reply: str | None = None,
        data_reply: str | None = None,
        drop_on: Iterable[str] = (),
        drop_with_reset: bool = False,
        delays: Mapping[str, float] | None = None,
    ) -> None:
        self.rcpt_replies: dict[str, str] = dict(rcpt_replies or {})
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.drop_on: set[str] = set(drop_on)
        self.drop_with_reset = drop_with_reset
        self.delays: dict[str, float] = dict(delays or {})
        self.messages: list[RecordedMessage] = []
        self.rcpt_attempts: list[str] = []  # every RCPT address seen, accepted or not
        self._cond = threading.Condition()

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.rcpt_attempts.clear()

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[RecordedMessage]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise LabError(
                    f"expected {n} messages within {timeout} s, got {len(self.messages)}"
                )
            return list(self.messages)

    async def _before(self, command: str, server: SMTP) -> bool:
        """Apply delay; return True if the connection was dropped instead of replying."""
        # Case-insensitive keys, normalized here because tests may reassign these attributes.
        delay = {k.upper(): v for k, v in self.delays.items()}.get(command)
        if delay:
            await asyncio.sleep(delay)
        if command in {c.upper() for c in self.drop_on}:
            if server.transport is not None:
                transport = cast(asyncio.Transport, server.transport)
                sock = transport.get_extra_info("socket")
                if self.drop_with_reset and sock is not None:
                    # linger 0: closing sends an RST instead of a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # abort() marks the transport lost at once, so aiosmtpd's reply is discarded.
                transport.abort()
            return True
        return False

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if await self._before("MAIL", server):
            return "421 4.4.2 dropped (lab)"
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._cond:
            self.rcpt_attempts.append(address)
        if await self._before("RCPT", server):
            return "421 4.4.2 dropped (lab)"
        reply = {k.lower(): v for k, v in self.rcpt_replies.items()}.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if await self._before("DATA", server):
            return "421 4.4.2 dropped (lab)"
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        login = session.auth_data if isinstance(session.auth_data, str) else None
        message = RecordedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            content=content,
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            peer=session.peer,
            helo=session.host_name,
            tls=session.ssl is not None,
            auth_login=login,
        )
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()
        return "250 2.0.0 OK: queued (lab)"


class _LabController(Controller):
    """Controller that supports port 0 and counts connections."""

    connections = 0

    def factory(self) -> SMTP:
        # aiosmtpd builds one SMTP protocol object per accepted connection.
        self.connections += 1
        smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
        return smtp

    def _trigger_server(self) -> None:
        # Runs once the listener exists: the place to learn which port 0 became.
        if self.port == 0 and self.server is not None:
            self.port = cast(asyncio.Server, self.server).sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class AiosmtpdServer(LabServer):
    """A running aiosmtpd Controller (its own thread and event loop)."""

    def __init__(self, controller: _LabController, handler: Any) -> None:
        self.controller = controller
        self.handler = handler
        self.host, self.port = controller.hostname, controller.port
        self._running = True
        self._register()

    @property
    def connections(self) -> int:
        """Connections accepted since start (the readiness probe is not counted)."""
        return self.controller.connections

    def message_count(self) -> int:
        messages = getattr(self.handler, "messages", None)
        return len(messages) if messages is not None else 0

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.controller.stop()
        self._unregister()


def aiosmtpd_server(
    handler: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    implicit_tls: bool = False,
    auth: Mapping[str, str] | None = None,
    auth_required: bool = False,
    auth_require_tls: bool = True,
    hostname: str = "smtp.test",
    **smtp_kwargs: Any,
) -> AiosmtpdServer:
    """Start aiosmtpd on host:port (0: any free port) with `handler` (a RecordingHandler if None).

    `tls_context` (e.g. TestCA.server_context()) enables STARTTLS, or with `implicit_tls` TLS
    from the first byte. `auth` = {user: password} enables AUTH PLAIN/LOGIN checked against it;
    by aiosmtpd's default AUTH is only offered after STARTTLS (`auth_require_tls`).
    Other keywords go to aiosmtpd.smtp.SMTP (e.g. data_size_limit, timeout)."""
    check_loopback(host)
    if handler is None:
        handler = RecordingHandler()
    kwargs: dict[str, Any] = dict(smtp_kwargs)
    if tls_context is not None and not implicit_tls:
        kwargs["tls_context"] = tls_context
        kwargs["require_starttls"] = require_starttls
    if auth is not None:
        users = dict(auth)

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            if isinstance(data, LoginPassword):
                login = data.login.decode("utf-8", "replace")
                if users.get(login) == data.password.decode("utf-8", "replace"):
                    return AuthResult(success=True, auth_data=login)
            return AuthResult(success=False, handled=False)

        kwargs |= {
            "authenticator": authenticator,
            "auth_required": auth_required,
            "auth_require_tls": auth_require_tls,
        }
    controller = _LabController(
        handler,
        hostname=host,
        port=port,
        server_hostname=hostname,
        ssl_context=tls_context if implicit_tls else None,
        **kwargs,
    )
    controller.start()
    controller.connections = 0  # forget the readiness probe
    return AiosmtpdServer(controller, handler)
