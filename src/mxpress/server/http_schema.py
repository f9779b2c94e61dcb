"""What the HTTP API accepts and returns: request validation and the JSON shapes.

Pure functions, no I/O. Every refusal is a LocalProtocolError whose message names the
field and the problem; the HTTP layer turns it into a 400. Nothing here touches the
store, so a refused request cannot have stored anything.
"""

from __future__ import annotations

import binascii
import json
import re
from base64 import b64decode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import StrEnum
from typing import Any, TypeVar

from mxpress.errors import LocalProtocolError
from mxpress.message import build_message, envelope_of, to_bytes
from mxpress.protocol.commands import validate_address
from mxpress.protocol.data import normalize_crlf
from mxpress.protocol.server_checks import HeaderCheck
from mxpress.queue.store import (
    MessageState,
    QueueCounts,
    QueuedMessage,
    QueueFilter,
    RecipientState,
    RecipientStatus,
)
from mxpress.rfc3339 import utc_millis

FIELDS = ("from", "to", "cc", "bcc", "subject", "text", "html", "headers", "attachments")
MESSAGE_FIELDS = (*FIELDS, "raw")
RAW_FIELDS = ("raw", "from", "to")
ATTACHMENT_FIELDS = ("filename", "content_type", "content_base64")
# Header fields the API writes itself; a client setting them would contradict the
# envelope or the MIME structure. The value says what to use instead.
RESERVED_HEADERS = {
    "from": "the 'from' field",
    "to": "the 'to' field",
    "cc": "the 'cc' field",
    "bcc": "the 'bcc' field (Bcc is never written into the message)",
    "subject": "the 'subject' field",
    "date": "nothing: it is generated",
    "message-id": "nothing: it is generated",
    "mime-version": "nothing: it is generated",
    "content-type": "'text', 'html' and 'attachments'",
    "content-transfer-encoding": "nothing: it is chosen per part",
}
MAX_HEADER_SECTION = 256 * 1024  # as the SMTP listener (submission.DEFAULT_MAX_HEADER_SIZE)
MAX_LINE = 998  # octets without CRLF (RFC 5322 §2.1.1)
# Characters that would end or corrupt a header line: C0 controls except TAB, DEL,
# and the Unicode line breaks that str.splitlines() honours.
_BAD_HEADER_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # ftext (RFC 5322 §3.6.8), kept to one line
_MIME_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]{0,63})/([a-z0-9][a-z0-9!#$&^_.+-]{0,63})")
_MAX_SHOWN = 80
QUERY_PARAMS = ("state", "recipient_state", "sender", "domain", "limit", "after")
MAX_PAGE = 1000
E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A validated submission, ready for `store.enqueue`."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes  # CRLF line ends, Bcc removed
    message_id: str | None


def _refuse(message: str) -> LocalProtocolError:
    return LocalProtocolError(message)


def _show(value: str) -> str:
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


# --- JSON --------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # json.loads would keep the last one silently
            raise _refuse(f"the JSON object has the key {_show(key)} twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise _refuse(f"{name} is not a JSON number")


def parse_json(body: bytes) -> object:
    """The request body as JSON; duplicate keys and NaN/Infinity are refused."""
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, LocalProtocolError):
            raise
        raise _refuse(f"the request body is not valid JSON: {exc}") from None


def _check_fields(obj: Mapping[str, object], allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _refuse(f"unknown field {_show(where + key)}; allowed: {', '.join(allowed)}")


# --- fields ------------------------------------------------------------------------


def _string(
    obj: Mapping[str, object], key: str, default: str | None = None, where: str = ""
) -> str:
    if key not in obj:
        if default is None:
            raise _refuse(f"{_show(where + key)} is required")
        return default
    value = obj[key]
    if not isinstance(value, str):
        raise _refuse(f"{_show(where + key)} must be a string")
    return value


def _address(value: object, field: str, *, recipient: bool) -> str:
    if not isinstance(value, str):
        raise _refuse(f"{_show(field)} must be a string holding one e-mail address")
    try:
        validate_address(value, smtputf8=True)  # UTF-8 needs SMTPUTF8 downstream; allowed
    except LocalProtocolError as exc:
        raise _refuse(f"{_show(field)}: {exc.message}") from None
    if recipient and "@" not in value:
        raise _refuse(f"{_show(field)}: {_show(value)} has no domain to deliver to")
    return value


def _address_list(obj: Mapping[str, object], key: str, limit: int) -> list[str]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise _refuse(f"{_show(key)} must be an array of e-mail addresses")
    if len(value) > limit:
        raise _refuse(f"{_show(key)} has {len(value)} addresses; at most {limit} are allowed")
    return [_address(item, f"{key}[{i}]", recipient=True) for i, item in enumerate(value)]


def _header_text(value: str, what: str) -> str:
    bad = _BAD_HEADER_CHARS.search(value)
    if bad is not None:
        raise _refuse(
            f"{what} contains the control character U+{ord(bad.group()):04X}: "
            "CR, LF and other controls are refused in headers (header injection)"
        )
    return value


def _headers(obj: Mapping[str, object]) -> dict[str, str]:
    value = obj.get("headers", {})
    if not isinstance(value, dict):
        raise _refuse("'headers' must be an object mapping header names to string values")
    headers: dict[str, str] = {}
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise _refuse(
                f"header name {_show(name)} is not valid: 1-76 printable ASCII characters "
                "without ':' or spaces (RFC 5322 §3.6.8)"
            )
        use = RESERVED_HEADERS.get(name.lower())
        if use is not None:
            raise _refuse(f"header {_show(name)} cannot be set in 'headers'; use {use}")
        if not isinstance(text, str):
            raise _refuse(f"the value of header {_show(name)} must be a string")
        headers[name] = _header_text(text, f"header {_show(name)}")
    return headers


@dataclass(frozen=True, slots=True)
class _Attachment:
    filename: str
    maintype: str
    subtype: str
    data: bytes


def _attachments(obj: Mapping[str, object]) -> list[_Attachment]:
    value = obj.get("attachments", [])
    if not isinstance(value, list):
        raise _refuse("'attachments' must be an array of objects")
    out: list[_Attachment] = []
    for i, item in enumerate(value):
        where = f"attachments[{i}]"
        if not isinstance(item, dict):
            raise _refuse(f"{_show(where)} must be an object")
        _check_fields(item, ATTACHMENT_FIELDS, where + ".")
        filename = _header_text(_string(item, "filename", where=where + "."), f"'{where}.filename'")
        if not filename or len(filename) > 255:
            raise _refuse(f"'{where}.filename' must be 1 to 255 characters")
        content_type = _string(item, "content_type", "application/octet-stream", where + ".")
        content_type = content_type.lower()
        mime = _MIME_TYPE.fullmatch(content_type)
        if mime is None or mime.group(1) == "multipart":
            raise _refuse(
                f"'{where}.content_type' {_show(content_type)} is not a single-part MIME type "
                "such as application/pdf (no parameters)"
            )
        encoded = _string(item, "content_base64", where=where + ".")
        try:  # validate=True: stray characters are an error, not silently dropped
            data = b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _refuse(f"'{where}.content_base64' is not valid base64: {exc}") from None
        out.append(_Attachment(filename, mime.group(1), mime.group(2), data))
    return out


# --- messages ----------------------------------------------------------------------


def parse_message(obj: object, *, max_recipients: int) -> ParsedMessage:
    """Validate a `POST /v1/messages` body and build the message it describes.

    max_recipients bounds each address list (to, cc, bcc: as their JSON Schema
    maxItems says) and a raw message's envelope."""
    if not isinstance(obj, dict):
        raise _refuse("the request body must be a JSON object")
    _check_fields(obj, MESSAGE_FIELDS, "")
    if "raw" in obj:
        return _parse_raw(obj, max_recipients)
    return _parse_fields(obj, max_recipients)


def _parse_fields(obj: Mapping[str, object], max_recipients: int) -> ParsedMessage:
    if "from" not in obj:
        raise _refuse("'from' is required (or give the whole message as 'raw')")
    sender = _address(obj["from"], "from", recipient=False)
    to, cc, bcc = (_address_list(obj, key, max_recipients) for key in ("to", "cc", "bcc"))
    recipients = tuple(dict.fromkeys([*to, *cc, *bcc]))
    if not recipients:
        raise _refuse("the message needs at least one recipient in 'to', 'cc' or 'bcc'")
    subject = _header_text(_string(obj, "subject", ""), "'subject'")
    text = _string(obj, "text", "")
    html = obj.get("html")
    if html is not None and not isinstance(html, str):
        raise _refuse("'html' must be a string (or null for no HTML part)")
    headers = _headers(obj)
    attachments = _attachments(obj)
    try:
        msg = build_message(
            sender, to, subject=subject, text=text, html=html, cc=cc, headers=headers
        )
    except LocalProtocolError:
        raise
    except ValueError as exc:  # e.g. a lone surrogate in the text: not encodable
        raise _refuse(f"cannot build the message: {exc}") from None
    for item in attachments:
        try:
            msg.add_attachment(
                item.data, maintype=item.maintype, subtype=item.subtype, filename=item.filename
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise _refuse(f"cannot attach {_show(item.filename)}: {exc}") from None
    return ParsedMessage(sender, recipients, to_bytes(msg), _printable(msg["Message-ID"]))


def _parse_raw(obj: Mapping[str, object], max_recipients: int) -> ParsedMessage:
    for key in obj:
        if key not in RAW_FIELDS:
            raise _refuse(
                f"{_show(key)} cannot be combined with 'raw' (with 'raw' only 'from' and "
                "'to' may be given: the envelope)"
            )
    raw = _string(obj, "raw")
    try:
        data = normalize_crlf(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refuse("'raw' is not valid Unicode text (it holds a lone surrogate)") from None
    head_end = _check_raw(data)
    sender = _address(obj["from"], "from", recipient=False) if "from" in obj else None
    recipients = _address_list(obj, "to", max_recipients) if "to" in obj else None
    if recipients == []:
        raise _refuse("'to' is empty: give at least one recipient, or leave it out")
    try:
        sender, found, data = envelope_of(data, sender=sender, recipients=recipients)
    except LocalProtocolError as exc:
        reason = exc.message.partition(";")[0]
        raise _refuse(f"'raw': {reason}; give the envelope as 'from' and 'to'") from None
    if "from" not in obj:
        _address(sender, "raw From header", recipient=False)
    if recipients is None:
        if len(found) > max_recipients:
            raise _refuse(
                f"'raw' has {len(found)} recipients in To, Cc and Bcc; at most "
                f"{max_recipients} are allowed"
            )
        for rcpt in found:
            _address(rcpt, "raw To/Cc/Bcc header", recipient=True)
    message_id = BytesHeaderParser(policy=compat32).parsebytes(data[:head_end])["Message-ID"]
    return ParsedMessage(sender, tuple(dict.fromkeys(found)), data, _printable(message_id))


def _printable(value: object) -> str | None:
    """A header value fit for a JSON reply (8-bit junk in a raw header is not)."""
    text = " ".join(str(value).split()) if value is not None else ""
    return text if text and text.isascii() and text.isprintable() else None


def _check_raw(data: bytes) -> int:
    """The checks the SMTP listener makes on DATA (protocol/server_checks.py), so that both
    ways in accept the same messages. Returns where the header section ends."""
    if not data:
        raise _refuse("'raw' is empty")
    lines = data.split(b"\r\n")
    longest = max(map(len, lines))
    if longest > MAX_LINE:
        raise _refuse(
            f"'raw' has a line of {longest} octets; the limit is {MAX_LINE} "
            "(RFC 5322 §2.1.1): encode long lines (quoted-printable or base64)"
        )
    check = HeaderCheck(MAX_HEADER_SECTION)
    size = 0
    for line in lines[:-1]:  # the data ends with CRLF: the last piece is empty
        size += len(line) + 2
        refusal = check.feed(line + b"\r\n")
        if refusal is not None:
            raise _refuse(f"'raw': {refusal[1].removeprefix('554 5.6.0 ')}")
        if check.done:
            break
    refusal = check.finish()
    if refusal is not None:
        raise _refuse(f"'raw': {refusal[1].removeprefix('554 5.6.0 ')}")
    return size


# --- queue listing ---------------------------------------------------------------


def parse_queue_filter(params: Sequence[tuple[str, str]]) -> QueueFilter:
    """`GET /v1/queue` query parameters; unknown or repeated ones are refused."""
    given: dict[str, str] = {}
    for name, value in params:
        if name not in QUERY_PARAMS:
            raise _refuse(
                f"unknown query parameter {_show(name)}; allowed: {', '.join(QUERY_PARAMS)}"
            )
        if name in given:
            raise _refuse(f"query parameter {_show(name)} is given more than once")
        given[name] = value
    limit_text = given.get("limit", "100")
    # Length first: int() refuses (ValueError) strings of thousands of digits.
    digits = limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 4
    if not (digits and 1 <= int(limit_text) <= MAX_PAGE):
        raise _refuse(f"'limit' must be an integer from 1 to {MAX_PAGE}, not {_show(limit_text)}")
    return QueueFilter(
        state=_enum(MessageState, "state", given.get("state")),
        recipient_state=_enum(RecipientState, "recipient_state", given.get("recipient_state")),
        sender=given.get("sender"),
        recipient_domain=given.get("domain"),
        limit=int(limit_text),
        after_id=given.get("after"),
    )


def _enum(kind: type[E], name: str, value: str | None) -> E | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(v) for v in kind)
        raise _refuse(f"{_show(name)} must be one of {allowed}, not {_show(value)}") from None


# --- responses ---------------------------------------------------------------------


def timestamp(epoch: float | None) -> str | None:
    return None if epoch is None else utc_millis(epoch)


def recipient_json(status: RecipientStatus) -> dict[str, object]:
    return {
        "address": status.recipient,
        "state": str(status.state),
        "attempts": status.attempts,
        "next_attempt": timestamp(status.next_attempt),
        "last_reply": status.last_reply,
        "last_host": status.last_host,
        "updated_at": timestamp(status.updated_at),
    }


def message_json(message: QueuedMessage) -> dict[str, object]:
    return {
        "id": message.id,
        "state": str(message.state),
        "sender": message.sender,
        "created_at": timestamp(message.created_at),
        "size": message.size,
        "is_bounce": message.is_bounce,
        "origin": message.origin,
        "envid": message.envid,
        "recipients": [recipient_json(r) for r in message.recipients],
    }


def counts_json(counts: QueueCounts) -> dict[str, object]:
    return {"messages": dict(counts.messages), "recipients": dict(counts.recipients)}
