"""Parsing what an SMTP client sends the server: paths, MAIL parameters, SASL responses.

Pure functions for protocol/server.py. Errors come back as the reply line to send, so
the caller needs no exception handling on its hot path.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from mxpress.protocol.server_checks import Refusal, RejectReason, check_sender
from mxpress.protocol.server_events import AuthRequest, MailFrom, ServerConfig

_USERNAME = b"334 VXNlcm5hbWU6\r\n"  # base64 "Username:", as every LOGIN client expects
_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"


def reply_line(reply: str) -> bytes:
    """One reply line from the driver's text, which must not be able to split it."""
    if "\r" in reply or "\n" in reply:
        raise ValueError(f"reply {reply!r} contains CR or LF")
    return reply.encode("ascii", "backslashreplace") + b"\r\n"


def split_path(text: str) -> tuple[str | None, str]:
    """'<path> params' → (the path as sent, the parameters); None if malformed."""
    text = text.lstrip(" ")
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            return None, ""
        path, rest = text[1:end], text[end + 1 :]
        if rest and rest[0] != " ":
            return None, ""
    else:  # no angle brackets: not RFC 5321, but common enough to take
        path, _, rest = text.partition(" ")
        if not path:
            return None, ""
    if path.startswith("@"):  # a source route (RFC 5321 §4.1.1.3, appendix C): ignored
        _, colon, path = path.partition(":")
        if not colon:
            return None, ""
    return path, rest


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None  # SIZE= (RFC 1870)
    body: str | None = None  # BODY=7BIT / 8BITMIME (RFC 6152)
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531)


NO_PARAMS = MailParams()


def parse_mail_params(text: str, *, auth_offered: bool) -> MailParams | bytes:
    """The parameters after MAIL FROM:<...>, or the error reply (501 bad value, 555 unknown)."""
    if not text or text.isspace():
        return NO_PARAMS
    size: int | None = None
    body: str | None = None
    smtputf8 = False
    seen: set[str] = set()
    for param in text.split():
        key, eq, value = param.partition("=")
        key = key.upper()
        if key in seen:
            return b"501 5.5.4 Duplicate MAIL parameter\r\n"
        seen.add(key)
        if key == "SIZE" and value.isascii() and value.isdigit() and len(value) <= 20:
            size = int(value)
        elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
            body = value.upper()
        elif key == "SMTPUTF8" and not eq:
            smtputf8 = True
        elif key == "AUTH" and eq and auth_offered:
            pass  # RFC 4954 §5: accepted and ignored; the session's identity counts
        elif key in ("SIZE", "BODY", "SMTPUTF8"):
            return b"501 5.5.4 Invalid MAIL parameter value\r\n"
        else:
            return b"555 5.5.4 Unsupported MAIL parameter\r\n"
    return MailParams(size, body, smtputf8)


def parse_mail(text: str, config: ServerConfig) -> MailFrom | Refusal | bytes:
    """What follows "MAIL FROM:": the event, a refusal (counted in the stats), or the reply
    to a syntax error."""
    sender, rest = split_path(text)
    if sender is None:
        return RejectReason.BAD_ADDRESS, "553 5.1.7 Bad sender address: malformed <path>"
    params = parse_mail_params(rest, auth_offered=bool(config.auth_mechanisms))
    if isinstance(params, bytes):
        return params
    refusal = check_sender(
        sender, smtputf8=params.smtputf8, size=params.size, max_size=config.max_message_size
    )
    if refusal is not None:
        return refusal
    return MailFrom(sender, params.size, params.body, params.smtputf8)


def parse_rcpt(text: str) -> str | Refusal | bytes:
    """What follows "RCPT TO:": the recipient as sent, a refusal, or a syntax error reply.
    (No RCPT parameters are offered: NOTIFY and ORCPT need DSN.)"""
    recipient, rest = split_path(text)
    if recipient is None:
        return RejectReason.BAD_ADDRESS, "553 5.1.3 Bad recipient address: malformed <path>"
    if rest.strip(" "):
        return b"555 5.5.4 Unsupported RCPT parameter\r\n"
    return recipient


def b64(text: str) -> bytes | None:
    """A SASL response or initial response; "=" is an empty one (RFC 4954 §4)."""
    if text == "=":
        return b""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(slots=True)
class SaslExchange:
    """The server's side of AUTH PLAIN (RFC 4616) or LOGIN: challenges, then credentials."""

    mechanism: str
    login: bytes | None = None  # LOGIN: the user name, once given

    def step(self, response: str | None) -> bytes | AuthRequest:
        """Take the client's response (None: AUTH came without an initial response).

        Returns the credentials, or the reply to send: a 334 challenge (the exchange
        goes on) or a 501 (it is over).
        """
        if response is None:
            return b"334 \r\n" if self.mechanism == "PLAIN" else _USERNAME
        if response == "*":
            return b"501 5.7.0 Authentication cancelled\r\n"
        blob = b64(response)
        if blob is None:
            return b"501 5.5.2 Cannot decode base64\r\n"
        if self.mechanism == "PLAIN":
            parts = blob.split(b"\x00")
            if len(parts) != 3:
                return b"501 5.5.2 Malformed PLAIN response\r\n"
            return AuthRequest("PLAIN", parts[0], parts[1], parts[2])
        if self.login is None:
            self.login = blob
            return _PASSWORD
        return AuthRequest("LOGIN", b"", self.login, blob)
