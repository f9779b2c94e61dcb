"""Building and serialising RFC 5322 messages from the standard library's EmailMessage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mxpress.errors import LocalProtocolError
from mxpress.protocol.commands import validate_address


def build_message(
    sender: str,
    recipients: Sequence[str],
    *,
    subject: str = "",
    text: str = "",
    html: str | None = None,
    cc: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """A complete message with Date, Message-ID and MIME; Unicode subjects become RFC 2047.

    Raises LocalProtocolError for a malformed address or a header value with CR/LF.
    """
    utf8 = not (sender.isascii() and all(r.isascii() for r in (*recipients, *cc)))
    for address in (sender, *recipients, *cc):
        validate_address(address, smtputf8=utf8)
    msg = EmailMessage(policy=policy.SMTPUTF8 if utf8 else policy.SMTP)
    domain = sender.rpartition("@")[2] or "localhost"
    try:
        msg["From"] = sender
        if recipients:
            msg["To"] = ", ".join(recipients)
        if cc:
            msg["Cc"] = ", ".join(cc)
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=domain.encode("idna").decode() if utf8 else domain)
        for name, value in (headers or {}).items():
            msg[name] = value
    except ValueError as exc:  # the email package refuses CR/LF in header values
        raise LocalProtocolError(f"invalid header: {exc}") from exc
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def to_bytes(msg: EmailMessage | bytes) -> bytes:
    """Wire form of a message: CRLF line ends, 8-bit/UTF-8 kept as the policy allows."""
    if isinstance(msg, bytes | bytearray):
        return bytes(msg)
    try:
        return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    except (ValueError, UnicodeError) as exc:
        raise LocalProtocolError(f"cannot serialise the message: {exc}") from exc
