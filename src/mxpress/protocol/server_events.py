"""What the server state machine (protocol/server.py) is configured with and what it says.

Events that need a decision (MailFrom, RcptTo, DataComplete, AuthRequest, StartTLS) stop
the machine until the driver answers them; Rejected and Quit only inform.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mxpress.protocol.server_checks import RejectReason

SASL_MECHANISMS = frozenset({"LOGIN", "PLAIN"})  # what the machine can run


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One listener's settings; shared by all its connections (the replies are prebuilt)."""

    hostname: str
    max_message_size: int
    max_header_size: int
    max_recipients: int
    starttls: bool = False  # offer STARTTLS (the driver has a TLS context)
    auth_mechanisms: tuple[str, ...] = ()  # e.g. ("LOGIN", "PLAIN"); () = no AUTH
    auth_requires_tls: bool = True  # AUTH neither offered nor taken before TLS
    max_errors: int = 20  # bad commands before the connection is closed
    greeting: bytes = field(init=False, repr=False, compare=False)
    ehlo_plain: bytes = field(init=False, repr=False, compare=False)
    ehlo_tls: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.hostname
        if not name or not name.isascii() or not name.isprintable() or " " in name:
            raise ValueError(f"server host name {name!r} must be printable ASCII, no spaces")
        unknown = set(self.auth_mechanisms) - SASL_MECHANISMS
        if unknown:
            raise ValueError(f"SASL mechanisms {sorted(unknown)} are not supported")
        for limit in ("max_message_size", "max_header_size", "max_recipients", "max_errors"):
            value = getattr(self, limit)
            # (an int: compiled code reading these would refuse a float mid-session)
            if type(value) is not int or value < 1:
                raise ValueError(f"{limit} must be a whole number, at least 1, not {value!r}")
        # Built once per listener, not per connection or per EHLO.
        object.__setattr__(self, "greeting", f"220 {name} ESMTP mxpress\r\n".encode())
        object.__setattr__(self, "ehlo_plain", self._ehlo(tls=False))
        object.__setattr__(self, "ehlo_tls", self._ehlo(tls=True))

    def _ehlo(self, *, tls: bool) -> bytes:
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        if self.starttls and not tls:
            lines.append("STARTTLS")
        if self.auth_mechanisms and (tls or not self.auth_requires_tls):
            lines.append("AUTH " + " ".join(self.auth_mechanisms))
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        return text.encode("ascii")


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM, syntax and address checked. Answer: accept() or refuse()."""

    sender: str  # as sent, without the angle brackets; "" is the null sender
    size: int | None  # SIZE= (RFC 1870), already checked against the limit
    body: str | None  # BODY=7BIT / 8BITMIME (RFC 6152)
    smtputf8: bool  # SMTPUTF8 (RFC 6531)


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO, syntax, address and the recipient limit checked. Answer: accept()/refuse()."""

    recipient: str


@dataclass(frozen=True, slots=True)
class DataComplete:
    """A whole, checked message. The transaction is over; the answer is the final reply
    (accept(reply) once it is stored, or refuse(reply))."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes = field(repr=False)  # dot-unstuffed, as received
    smtputf8: bool


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Credentials from AUTH PLAIN or LOGIN. Answer: accept_auth(user) or refuse(reply)."""

    mechanism: str
    authzid: bytes  # PLAIN's authorization identity (b"" if none, and for LOGIN)
    login: bytes
    password: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The 220 is queued: send it, run the TLS handshake, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class Quit:
    """The 221 is queued: send it and close. The machine takes no more input."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The machine refused something itself (the reply is queued); for the stats."""

    reason: RejectReason


Event = MailFrom | RcptTo | DataComplete | AuthRequest | StartTLS | Quit | Rejected
