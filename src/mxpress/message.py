"""Building and serialising RFC 5322 messages from the standard library's EmailMessage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from email import policy
from email.message import EmailMessage
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
    if sender is not None and recipients is not None:
        return sender, list(recipients), strip_header(data, b"bcc", head_end)
    fields = _address_fields(data[:head_end])
    if sender is None:
        addresses = _addresses(fields.get("from") or fields.get("sender") or [])
        if not addresses:
            raise LocalProtocolError("the message has no From address; pass sender=...")
        sender = addresses[0]
    if recipients is None:
        values = [*fields.get("to", []), *fields.get("cc", []), *fields.get("bcc", [])]
        recipients = list(dict.fromkeys(_addresses(values)))
        if not recipients:
            raise LocalProtocolError("the message has no To, Cc or Bcc; pass recipients=...")
    return sender, list(recipients), strip_header(data, b"bcc", head_end)


_ADDRESS_FIELDS = frozenset({"from", "sender", "to", "cc", "bcc"})
# Characters that need RFC 5322 parsing (display names, comments, quoting, groups).
_SPECIALS = frozenset('<>()"\\:;[]')


def _address_fields(head: bytes) -> dict[str, list[str]]:
    """The unfolded values of the address header fields. A hand scan: this runs per
    message on the send path, where the email package's parser costs ~50 µs."""
    text = head.decode("utf-8", "surrogateescape")
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\r\n"):
        if line[:1] in (" ", "\t"):
            if current is not None:
                current[-1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if colon and key in _ADDRESS_FIELDS:
            current = fields.setdefault(key, [])
            current.append(value.strip())
        else:
            current = None
    return fields


def _addresses(values: list[str]) -> list[str]:
    """Bare addresses from header values; plain `a@b, c@d` lists skip the full parser."""
    out: list[str] = []
    for value in values:
        if _SPECIALS.isdisjoint(value):
            out.extend(a for a in (p.strip() for p in value.split(",")) if a)
        else:
            out.extend(a for _, a in getaddresses([value]) if a)
    return out


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
