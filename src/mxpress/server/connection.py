"""One SMTP submission connection: an asyncio Protocol driving protocol.server's machine.

The machine parses and checks; this module does the I/O and asks the listener: who may
relay, whether a password is right (scrypt in a thread), storing the message (the 250
only after the queue's fsync). Every read is handled at once, and all the replies it
produced go out in one write.

The policy (who may relay, the limits, where mail goes) belongs to the listener
(`Listener`, implemented by `SubmissionServer`), so this module imports nothing from it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Protocol, cast

from mxpress.protocol.server import ServerMachine
from mxpress.protocol.server_checks import AUTH_REQUIRED, RELAY_DENIED, RejectReason
from mxpress.protocol.server_events import (
    AuthRequest,
    DataComplete,
    MailFrom,
    RcptTo,
    Rejected,
    ServerConfig,
    StartTLS,
)

logger = logging.getLogger(__name__)

SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, try again later"
_TIMEOUT_REPLY = "421 4.4.2 Idle timeout, closing connection"
# Input kept while the machine waits for an answer (e.g. the queue's fsync); beyond it
# reading pauses, so a client that pipelines without end cannot fill memory.
_MAX_BUFFERED = 256 * 1024


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

    max_auth_failures: int
    timeout: float

    @property
    def stopping(self) -> bool: ...
    def is_trusted(self, peer: str) -> bool: ...
    async def check_login(self, login: bytes, password: bytes) -> str | None: ...
    def deliver(self, transaction: Transaction) -> asyncio.Future[str]: ...
    def count(self, reason: RejectReason) -> None: ...
    def opened(self, conn: SubmissionConnection) -> None: ...
    def ensure_nodelay(self, transport: asyncio.BaseTransport) -> None: ...
    def closed(self, conn: SubmissionConnection) -> None: ...


class SubmissionConnection(asyncio.Protocol):
    """One client connection. `starttls` is the context for STARTTLS, if offered."""

    def __init__(
        self,
        listener: Listener,
        config: ServerConfig,
        *,
        starttls: ssl.SSLContext | None,
        implicit_tls: bool,
    ) -> None:
        self.listener = listener
        self._machine = ServerMachine(config, tls=implicit_tls)
        self._starttls = starttls
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._last_input = 0.0
        self._peer = ""
        self._trusted: bool | None = None
        self._auth_failures = 0
        self._task: asyncio.Task[None] | None = None  # an AUTH check or a TLS handshake
        # Reading pauses while input piles up behind a pending answer, or while the
        # client does not read its replies.
        self._input_full = False
        self._output_full = False
        self._reading = True
        self._handshaking = False  # STARTTLS accepted, start_tls() not returned yet
        self._eof = False  # the client half-closed
        self._closing = False
        self.opened_at = 0.0  # time.monotonic(), set by the listener if it wants it

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.listener.ensure_nodelay(transport)
        if self.listener.stopping:  # accepted just before the listening socket closed:
            self._machine.take_output()  # no greeting, opened() sends the 421
        self.listener.opened(self)
        if self._closing:
            return
        self._last_input = self._loop.time()
        self._timer = self._loop.call_later(self.listener.timeout, self._check_idle)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_input = self._loop.time()
        if self._handshaking:
            # Decrypted input that came before start_tls() returned (the handshake is
            # done): keep it, but reply only once the TLS transport is ours.
            if self._machine.waiting:
                self._machine.tls_started()
            self._machine.receive(data)
            return
        self._machine.receive(data)
        self._run()
        if self._machine.waiting and self._machine.buffered > _MAX_BUFFERED:
            self._input_full = True
            self._update_reading()

    def eof_received(self) -> bool | None:
        # The client has sent all it will. If a reply is still being decided (the
        # queue's fsync), keep the connection open to send it, then close.
        self._eof = True
        return True if self._machine.waiting else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self.listener.closed(self)

    def pause_writing(self) -> None:
        self._output_full = True  # the client does not read its replies: stop reading
        self._update_reading()

    def resume_writing(self) -> None:
        self._output_full = False
        self._update_reading()

    # --- the event loop of one connection --------------------------------------------------

    def _run(self) -> None:
        """Handle every complete command that came in, then send all the replies at once."""
        machine = self._machine
        while (event := machine.next_event()) is not None:
            if type(event) is MailFrom:
                self._on_mail()
            elif type(event) is RcptTo:
                if self._may_relay():
                    machine.accept()
                else:  # MAIL was refused already without a right to relay; checked again
                    self.listener.count(RELAY_DENIED[0])
                    machine.refuse(RELAY_DENIED[1])
            elif type(event) is DataComplete:
                self._deliver(event)
            elif type(event) is Rejected:
                self.listener.count(event.reason)
            elif type(event) is AuthRequest:
                self._task = self._loop.create_task(self._auth(event))
            elif type(event) is StartTLS:
                # No more plaintext from now on: start_tls() swaps the protocol only
                # when its task runs.
                self._handshaking = True
                self._reading = False
                if self._transport is not None:
                    self._transport.pause_reading()
                self._task = self._loop.create_task(self._start_tls())
        self._flush()
        if self._eof and not machine.waiting and not self._closing:
            self._closing = True
            if self._transport is not None:
                self._transport.close()
        elif not machine.closed and self.listener.stopping:
            self.close_if_idle()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        out = self._machine.take_output()
        if out:
            transport.write(out)
        if self._machine.closed:
            self._closing = True
            transport.close()

    def _on_mail(self) -> None:
        machine = self._machine
        if self.listener.stopping:
            self.listener.count(RejectReason.SHUTTING_DOWN)
            machine.shutdown(SHUTDOWN_REPLY)
        elif self._may_relay():
            machine.accept()
        else:
            self.listener.count(AUTH_REQUIRED[0])
            machine.refuse(AUTH_REQUIRED[1])

    def _may_relay(self) -> bool:
        """Never an open relay: only an authenticated session or a trusted network."""
        if self._machine.auth_user is not None:
            return True
        if self._trusted is None:
            self._trusted = self.listener.is_trusted(self._peer)
        return self._trusted

    def _answered(self) -> None:
        """An answer the machine waited for was given: go on with what is buffered."""
        if self._closing:
            return
        if self._input_full:
            self._input_full = False
            self._update_reading()
        self._run()

    # --- DATA: the 250 only once the queue has the message -------------------------------

    def _deliver(self, event: DataComplete) -> None:
        transaction = Transaction(
            sender=event.sender,
            recipients=event.recipients,
            data=event.data,
            auth_user=self._machine.auth_user,
            peer=self._peer,
            tls=self._machine.tls,
            helo=self._machine.helo or "",
            smtputf8=event.smtputf8,
        )
        # A callback, not an awaiting task: the store runs as the listener's task, which
        # a closing connection never cancels (stop() waits for it).
        self.listener.deliver(transaction).add_done_callback(self._delivered)

    def _delivered(self, future: asyncio.Future[str]) -> None:
        if self._closing:
            return  # stored or not, no one is there to be told
        machine = self._machine
        if future.cancelled():
            machine.refuse("451 4.3.0 Message not queued (shutting down), try again later")
        elif (exc := future.exception()) is not None:
            logger.error(
                "submission: the queue refused a message from %s", self._peer, exc_info=exc
            )
            self.listener.count(RejectReason.ACCEPT_FAILED)
            machine.refuse("451 4.3.0 Message not queued (local error), try again later")
        else:
            queue_id = future.result()
            if not (queue_id.isascii() and queue_id.isprintable()):  # it goes in a reply
                queue_id = queue_id.encode("unicode_escape").decode("ascii")
            machine.accept(f"250 2.0.0 Ok: queued as {queue_id}")
        self._answered()

    # --- AUTH and STARTTLS ----------------------------------------------------------------

    async def _auth(self, event: AuthRequest) -> None:
        machine = self._machine
        # Acting for another user (a PLAIN authzid) is not supported: a failure, but
        # checked all the same so that it takes as long as any other.
        acting_as_other = bool(event.authzid) and event.authzid != event.login
        password = b"" if acting_as_other else event.password
        try:
            user = await self.listener.check_login(event.login, password)
        except Exception:
            logger.exception("submission: password check failed")
            if not self._closing:
                machine.refuse("454 4.7.0 Temporary authentication failure")
                self._answered()
            return
        if self._closing:
            return
        if user is not None and not acting_as_other:
            machine.accept_auth(user)
            self._answered()
            return
        self._auth_failures += 1
        self.listener.count(RejectReason.AUTH_FAILED)
        if self._auth_failures < self.listener.max_auth_failures:
            machine.refuse("535 5.7.8 Authentication credentials invalid")
        else:
            self.listener.count(RejectReason.AUTH_LOCKOUT)
            machine.shutdown("421 4.7.0 Too many authentication failures, closing connection")
        self._answered()

    async def _start_tls(self) -> None:
        transport, context = self._transport, self._starttls
        assert transport is not None and context is not None
        try:
            tls_transport = await self._loop.start_tls(transport, self, context, server_side=True)
        except (OSError, TimeoutError) as exc:  # (ssl.SSLError is an OSError)
            logger.info("submission: TLS handshake with %s failed: %s", self._peer, exc)
            transport.abort()
            return
        finally:
            self._handshaking = False
        if tls_transport is None or self._closing:
            return
        self._transport = tls_transport
        self._reading = True  # a new transport, reading
        self._update_reading()
        if self._machine.waiting:  # (unless input came first: see data_received)
            self._machine.tls_started()
        self._answered()

    # --- idle timeout and stopping ---------------------------------------------------------

    def _check_idle(self) -> None:
        """One timer per connection, re-armed lazily: input only records its time."""
        timeout = self.listener.timeout
        now = self._loop.time()
        if self._machine.waiting:  # waiting for us (the queue, a password check)
            self._last_input = now
        left = self._last_input + timeout - now
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_idle)
            return
        self._timer = None
        self._machine.shutdown(_TIMEOUT_REPLY)
        self._flush()

    def close_if_idle(self) -> None:
        """While stopping: close now unless a command or a transaction is in progress."""
        if not self.listener.stopping or self._closing or self._transport is None:
            return
        machine = self._machine
        if machine.busy or machine.in_transaction:
            return
        machine.shutdown(SHUTDOWN_REPLY)
        self._flush()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        want = not (self._input_full or self._output_full)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()
