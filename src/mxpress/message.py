"""Building and serialising RFC 5322 messages from the standard library's EmailMessage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formatdate, getaddresses, make_msgid

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


def envelope_of(
    message: EmailMessage | bytes,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
) -> tuple[str, list[str], bytes]:
    """Envelope and wire bytes for a message: sender from From (or Sender), recipients from
    To, Cc and Bcc unless given; the Bcc header is removed from what is sent."""
    data = to_bytes(message)
    head_end = _header_end(data)
    head = data[:head_end]
    # compat32 parsing is several times faster than the modern header registry and
    # getaddresses needs only raw values; UTF-8 headers (SMTPUTF8) need the modern one.
    parse_policy = policy.compat32 if head.isascii() else policy.SMTPUTF8
    headers = BytesHeaderParser(policy=parse_policy).parsebytes(head + b"\r\n")
    if sender is None:
        found = getaddresses(headers.get_all("From", []) or headers.get_all("Sender", []))
        addresses = [a for _, a in found if a]
        if not addresses:
            raise LocalProtocolError("the message has no From address; pass sender=...")
        sender = addresses[0]
    if recipients is None:
        found = getaddresses(
            [*headers.get_all("To", []), *headers.get_all("Cc", []), *headers.get_all("Bcc", [])]
        )
        recipients = list(dict.fromkeys(a for _, a in found if a))
        if not recipients:
            raise LocalProtocolError("the message has no To, Cc or Bcc; pass recipients=...")
    return sender, list(recipients), strip_header(data, b"bcc", head_end)


def _header_end(data: bytes) -> int:
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def strip_header(data: bytes, name: bytes, head_end: int | None = None) -> bytes:
    """Remove every `name:` header field (with its folded continuation lines)."""
    head_end = _header_end(data) if head_end is None else head_end
    head = data[:head_end]
    if name + b":" not in head.lower():
        return data
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue  # a folded continuation of the removed field
        skipping = line.split(b":", 1)[0].strip().lower() == name
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + data[head_end:]
