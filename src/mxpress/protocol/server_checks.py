"""What the submission listener refuses, and with which reply: pure functions, no I/O.

Each check returns None or a `Refusal` (the reason for the stats, the reply line). The
server state machine (protocol/server.py) runs them, and the HTTP API runs HeaderCheck, so
that both ways in refuse the same messages.
"""

from __future__ import annotations

from enum import StrEnum

from mxpress.errors import LocalProtocolError
from mxpress.protocol.commands import validate_address

_MAX_REASON = 200  # characters of a validation message quoted in a reply
# ftext (RFC 5322 §3.6.8): printable US-ASCII except ":".
_FTEXT = bytes(range(33, 127)).replace(b":", b"")


class RejectReason(StrEnum):
    """Why the listener refused something (the keys of `SubmissionStats.rejected`)."""

    AUTH_REQUIRED = "auth_required"  # MAIL from a peer that may not relay (530)
    RELAY_DENIED = "relay_denied"  # RCPT from a peer that may not relay (554)
    BAD_ADDRESS = "bad_address"  # MAIL/RCPT address failed validation (553)
    TOO_MANY_RECIPIENTS = "too_many_recipients"  # 452
    OVERSIZE = "oversize"  # SIZE= or the data itself over the limit (552)
    BAD_CONTENT = "bad_content"  # header section malformed, no From, line too long (554)
    ACCEPT_FAILED = "accept_failed"  # the queue raised: nothing stored (451)
    AUTH_FAILED = "auth_failed"  # wrong user or password (535)
    AUTH_LOCKOUT = "auth_lockout"  # too many failures on one connection (421)
    SHUTTING_DOWN = "shutting_down"  # MAIL while stopping (421)


Refusal = tuple[RejectReason, str]

AUTH_REQUIRED: Refusal = (RejectReason.AUTH_REQUIRED, "530 5.7.0 Authentication required")
RELAY_DENIED: Refusal = (RejectReason.RELAY_DENIED, "554 5.7.1 Relay access denied")
LINE_TOO_LONG: Refusal = (
    RejectReason.BAD_CONTENT,
    "554 5.6.0 Line too long (RFC 5321 §4.5.3.1.6: at most 998 characters and CRLF)",
)


def too_big(limit: int) -> Refusal:
    return (
        RejectReason.OVERSIZE,
        f"552 5.3.4 Message size exceeds fixed maximum message size ({limit} octets)",
    )


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


def check_sender(
    address: str, *, smtputf8: bool, size: int | None, max_size: int
) -> Refusal | None:
    """MAIL FROM: the address, and a declared SIZE= over the limit (RFC 1870 §6.1).

    The null sender <> is accepted: bounces and other notifications need it (RFC 5321
    §4.5.5), and whoever may relay may send them.
    """
    try:
        validate_address(address, smtputf8=smtputf8, allow_empty=True)
    except LocalProtocolError as exc:
        return RejectReason.BAD_ADDRESS, f"553 5.1.7 Bad sender address: {_reason(exc)}"
    if size is not None and size > max_size:
        return too_big(max_size)
    return None


def check_recipient(
    address: str, *, smtputf8: bool, count: int, max_recipients: int
) -> Refusal | None:
    """RCPT TO: the address, and the recipient limit (`count` accepted so far)."""
    try:
        validate_address(address, smtputf8=smtputf8)
    except LocalProtocolError as exc:
        return RejectReason.BAD_ADDRESS, f"553 5.1.3 Bad recipient address: {_reason(exc)}"
    if "@" not in address:  # a bare "postmaster" has no domain to relay to
        return (
            RejectReason.BAD_ADDRESS,
            "553 5.1.3 Bad recipient address: a relayed recipient needs a domain",
        )
    if count >= max_recipients:
        return (
            RejectReason.TOO_MANY_RECIPIENTS,
            f"452 4.5.3 Too many recipients (at most {max_recipients})",
        )
    return None


class HeaderCheck:
    """Checks the header section line by line as DATA arrives (RFC 5322 §2.2, §3.6).

    Bare CR or LF and NUL are refused because a downstream MTA may read them as line
    ends, which lets a sender inject headers the checks never saw.
    """

    __slots__ = ("done", "from_count", "limit", "size", "started")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.done = False  # the empty line that ends the header section was seen
        self.started = False
        self.from_count = 0

    def feed(self, line: bytes) -> Refusal | None:
        """Check one CRLF-terminated, dot-unstuffed line."""
        problem = self._problem(line)
        return None if problem is None else (RejectReason.BAD_CONTENT, f"554 5.6.0 {problem}")

    def _problem(self, line: bytes) -> str | None:
        self.size += len(line)
        if self.size > self.limit:
            return f"header section exceeds {self.limit} octets"
        if line == b"\r\n":
            self.done = True
            return None
        if line.count(b"\r") != 1 or line.count(b"\n") != 1:
            return "header section contains a bare CR or LF (lines must end with CRLF)"
        if b"\x00" in line:
            return "header section contains a NUL character"
        if line[0] in b" \t":  # a folded continuation of the previous field
            return None if self.started else "message starts with a folded header line"
        name, colon, _ = line.partition(b":")
        name = name.rstrip(b" \t")  # RFC 5322 §4.5.3 obsolete "Name :" form
        if not colon or not name or name.translate(None, _FTEXT):
            return f"not a header field: {line[:40]!r}"
        self.started = True
        if name.lower() == b"from":
            self.from_count += 1
        return None

    def finish(self) -> Refusal | None:
        """At the end of the data: exactly one From (RFC 5322 §3.6)."""
        if self.from_count == 1:
            return None
        problem = "no From header" if self.from_count == 0 else "more than one From header"
        return RejectReason.BAD_CONTENT, f"554 5.6.0 message has {problem}"
