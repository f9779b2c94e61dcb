"""The one exception tree of mxpress (DESIGN.md §4).

Every error can say *what* went wrong, *where* (host and phase) and, when a server
answered, *the reply*. Callers catch `MxpressError` for everything, or a branch of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mxpress.protocol.replies import Reply


class MxpressError(Exception):
    """Root of every error mxpress raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        phase: str | None = None,
        reply: Reply | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.phase = phase
        self.reply = reply

    def __str__(self) -> str:
        where = []
        if self.host:
            where.append(f"host {self.host}")
        if self.phase:
            where.append(f"during {self.phase}")
        text = self.message
        if where:
            text += f" ({', '.join(where)})"
        if self.reply is not None:
            text += f": server replied {self.reply.code} {self.reply.text!r}"
        return text


class ConfigError(MxpressError, ValueError):
    """A setting or argument is wrong; the message names it and says what is allowed."""


# --- SMTP protocol -----------------------------------------------------------


class ProtocolError(MxpressError):
    """The SMTP conversation cannot go on as the protocol requires."""


class LocalProtocolError(ProtocolError, ValueError):
    """We refused to send something: bad address, CR/LF injection, message over SIZE, ..."""


class RemoteProtocolError(ProtocolError):
    """The server sent something that is not SMTP (garbage, oversize reply, wrong sequence)."""


# --- transport -----------------------------------------------------------------


class TransportError(MxpressError, ConnectionError):
    """The connection itself failed."""


class ConnectError(TransportError):
    """Could not open a TCP connection to the server."""


class ReadError(TransportError):
    """The connection broke (or was closed by the server) while reading."""


class WriteError(TransportError):
    """The connection broke while writing."""


class TLSError(TransportError):
    """The TLS handshake failed or TLS was required but is not available."""


class TransportTimeout(TransportError, TimeoutError):
    """A phase took longer than its timeout."""


# --- SMTP replies and delivery ---------------------------------------------------


class DeliveryError(MxpressError):
    """The server refused something; `reply` holds its answer.

    `recipients` maps each recipient that was tried to its reply, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        phase: str | None = None,
        reply: Reply | None = None,
        recipients: dict[str, Reply] | None = None,
    ) -> None:
        super().__init__(message, host=host, phase=phase, reply=reply)
        self.recipients = dict(recipients or {})

    @property
    def is_transient(self) -> bool:
        return self.reply is None or self.reply.code < 500


class TransientDeliveryError(DeliveryError):
    """A 4xx reply (or a failure that may pass): try again later."""


class PermanentDeliveryError(DeliveryError):
    """A 5xx reply: trying again will not help."""

    @property
    def is_transient(self) -> bool:
        return False


class AuthenticationError(DeliveryError):
    """AUTH failed, or was refused because it would expose credentials."""

    @property
    def is_transient(self) -> bool:
        # Without a 4xx reply (no usable mechanism, plaintext refused) retrying cannot help.
        return self.reply is not None and self.reply.code < 500


# --- DNS -------------------------------------------------------------------------


class DNSError(MxpressError):
    """A DNS lookup failed."""

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        host: str | None = None,
        phase: str | None = "dns",
    ) -> None:
        super().__init__(message, host=host, phase=phase)
        self.name = name

    @property
    def is_transient(self) -> bool:
        return False


class NXDomain(DNSError):
    """The domain does not exist (permanent)."""


class NoMX(DNSError):
    """The domain has no usable mail exchanger (no MX and no address): permanent."""


class NullMX(NoMX):
    """The domain publishes a null MX (RFC 7505): it accepts no mail. Permanent."""


class DNSTemporaryError(DNSError):
    """SERVFAIL, timeout, unreachable resolver: try again later."""

    @property
    def is_transient(self) -> bool:
        return True


# --- pool ------------------------------------------------------------------------


class PoolTimeout(MxpressError, TimeoutError):
    """No session for a destination became free within the pool timeout."""


def error_for_reply(
    message: str,
    reply: Reply,
    *,
    host: str | None = None,
    phase: str | None = None,
    recipients: dict[str, Reply] | None = None,
) -> DeliveryError:
    """Build the transient or permanent error that fits the reply's code class."""
    cls = PermanentDeliveryError if reply.code >= 500 else TransientDeliveryError
    return cls(message, host=host, phase=phase, reply=reply, recipients=recipients)


# --- queue -----------------------------------------------------------------------


class QueueError(MxpressError):
    """The durable queue refused or failed an operation: bad input, a message that is
    gone, or the database itself (busy, full, unreadable). Nothing was half-stored."""


# --- observability ---------------------------------------------------------------


class ProfilerError(MxpressError):
    """A profile cannot be captured (e.g. pyinstrument is not installed)."""


class ProfilerBusy(ProfilerError):
    """A profile is being captured already; one at a time (the sampler would mix them)."""


# --- build -----------------------------------------------------------------------


class StaleBuildError(MxpressError, ImportError):
    """A compiled module (mypyc, setup.py) was compiled from a source that has changed
    since: Python would import the old compiled code, not the source on disk. Rebuild, or
    delete the compiled files."""
