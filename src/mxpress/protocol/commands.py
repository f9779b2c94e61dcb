"""SMTP command encoding with address and parameter validation (RFC 5321, 1870, 3461,
3030, 4954, 6152, 6531).

Every builder returns one complete command line ending in CRLF, and refuses (with
`LocalProtocolError`) anything that could break out of that line: CR, LF, NUL and other
control characters never reach the wire. Checks are plain string operations, not
regexes: they run for every message.
"""

from __future__ import annotations

import binascii
import unicodedata
from collections.abc import Iterable

from mxpress.errors import LocalProtocolError, RemoteProtocolError

DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
NOOP = b"NOOP\r\n"
QUIT = b"QUIT\r\n"
STARTTLS = b"STARTTLS\r\n"

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_ADDRESS_OCTETS = 254
# RFC 5321 §4.5.3.1.1.
MAX_LOCAL_PART_OCTETS = 64

_BODY_TYPES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})
_RET_VALUES = frozenset({"FULL", "HDRS"})
_NOTIFY_ORDER = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
# Non-printable characters we refuse anywhere: controls, surrogates, Unicode spaces and
# line/paragraph separators. (Format characters such as ZWJ stay allowed: IDNs use them.)
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zs", "Zl", "Zp"})
# sasl-mech = 1*20 (UPPER-ALPHA / DIGIT / HYPHEN / UNDERSCORE)   (RFC 4422 §3.1)
_SASL_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
# xchar: "!" .. "~" except "+" and "=" (RFC 3461 §4).
_XCHARS = frozenset(chr(c) for c in range(33, 127)) - {"+", "="}
_XTEXT_BYTE = tuple(chr(b) if chr(b) in _XCHARS else f"+{b:02X}" for b in range(256))
_HEX_UPPER = frozenset("0123456789ABCDEF")
_MAX_SHOWN = 320  # longer than any acceptable address


def _show(value: str) -> str:
    """repr() for error messages, cut short so a huge input cannot flood the logs."""
    if len(value) > _MAX_SHOWN:
        return repr(value[:_MAX_SHOWN]) + f"... ({len(value)} characters)"
    return repr(value)


def _refuse_unprintable(what: str, value: str) -> None:
    """Raise if `value` holds a control character, a line break or a non-ASCII space.

    Only called once the fast `str.isprintable()` check failed.
    """
    for ch in value:
        if ch.isprintable() or unicodedata.category(ch) not in _REFUSED_CATEGORIES:
            continue
        if ch in "\r\n\x85\u2028\u2029":
            kind = "a line break"
        elif ch == "\x00":
            kind = "a NUL character"
        elif unicodedata.category(ch).startswith("Z"):
            kind = "a non-ASCII space"
        else:
            kind = "a control character"
        raise LocalProtocolError(
            f"{what} {_show(value)} contains {kind} (U+{ord(ch):04X}); refusing to send it "
            "because it could corrupt or inject SMTP commands"
        )


def validate_address(address: str, *, smtputf8: bool = False, allow_empty: bool = False) -> str:
    """Return `address` unchanged if it can go in MAIL FROM:<...> / RCPT TO:<...>.

    A fast structural check, not a full RFC 5321 grammar: it refuses what would break
    the command line or that every server rejects. `allow_empty` admits the null
    sender. The bare (case-insensitive) "postmaster" is accepted (RFC 5321 §4.1.1.3).
    """
    if not address:
        if allow_empty:
            return address
        raise LocalProtocolError(
            "empty address: only the sender may be empty (the null reverse-path <>)"
        )
    if not address.isprintable():
        _refuse_unprintable("address", address)
    if address.isascii():
        octets = len(address)
    elif not smtputf8:
        raise LocalProtocolError(
            f"address {_show(address)} contains non-ASCII characters: the server must "
            "support SMTPUTF8 (RFC 6531) to accept it, and the message must be sent with it"
        )
    else:
        octets = len(address.encode("utf-8"))
    if octets > MAX_ADDRESS_OCTETS:
        raise LocalProtocolError(
            f"address {_show(address)} is {octets} octets long; "
            f"the limit is {MAX_ADDRESS_OCTETS} (RFC 5321 §4.5.3.1.3)"
        )
    if "<" in address or ">" in address:
        raise LocalProtocolError(
            f"address {_show(address)} contains '<' or '>'; give the bare address "
            "without angle brackets"
        )
    at = address.rfind("@")
    if at < 0:
        if address.lower() == "postmaster":
            return address
        raise LocalProtocolError(f"address {_show(address)} has no '@' and domain")
    if at == 0:
        raise LocalProtocolError(f"address {_show(address)} has an empty local part")
    if at == len(address) - 1:
        raise LocalProtocolError(f"address {_show(address)} has an empty domain")

    if address[0] == '"':
        _check_quoted_local_part(address, at)
        if address.find(" ", at) >= 0:
            raise LocalProtocolError(f"address {_show(address)} contains a space in its domain")
    else:
        if " " in address:
            raise LocalProtocolError(
                f"address {_show(address)} contains a space outside a quoted local part"
            )
        if address.find("@") != at:
            raise LocalProtocolError(
                f"address {_show(address)} contains more than one '@' "
                "(quote the local part if it really holds one)"
            )

    local_octets = at if octets == len(address) else len(address[:at].encode("utf-8"))
    if local_octets > MAX_LOCAL_PART_OCTETS:
        raise LocalProtocolError(
            f"address {_show(address)} has a local part of {local_octets} octets; "
            f"the limit is {MAX_LOCAL_PART_OCTETS} (RFC 5321 §4.5.3.1.1)"
        )
    if address[at + 1] == "[" and (address[-1] != "]" or len(address) - at < 4):
        raise LocalProtocolError(
            f"address {_show(address)} has a malformed address literal; "
            "expected e.g. user@[192.0.2.1] or user@[IPv6:2001:db8::1]"
        )
    return address


def _check_quoted_local_part(address: str, at: int) -> None:
    """The local part is a Quoted-string: "..." with backslash escaping one character."""
    end = at - 1
    if end < 1 or address[end] != '"':
        raise LocalProtocolError(
            f"address {_show(address)} has a malformed quoted local part "
            "(it must be \"...\" directly followed by '@')"
        )
    i = 1
    while i < end:
        ch = address[i]
        if ch == "\\":
            if i + 1 >= end:
                raise LocalProtocolError(
                    f"address {_show(address)} ends its quoted local part with a lone backslash"
                )
            i += 2
        elif ch == '"':
            raise LocalProtocolError(
                f"address {_show(address)} has an unescaped '\"' inside its quoted local part"
            )
        else:
            i += 1


def _check_token(what: str, value: str) -> None:
    """A word on the command line: non-empty printable ASCII without spaces."""
    if value and value.isascii() and value.isprintable() and " " not in value:
        return
    if not value:
        raise LocalProtocolError(f"{what} is empty")
    if not value.isprintable():
        _refuse_unprintable(what, value)
    if not value.isascii():
        raise LocalProtocolError(f"{what} {_show(value)} must be ASCII")
    raise LocalProtocolError(f"{what} {_show(value)} must not contain spaces")


def ehlo(name: str) -> bytes:
    """EHLO with our host name (or an address literal such as "[192.0.2.1]")."""
    _check_token("EHLO name", name)
    return b"EHLO " + name.encode("ascii") + b"\r\n"


def helo(name: str) -> bytes:
    """HELO, for servers that do not speak ESMTP."""
    _check_token("HELO name", name)
    return b"HELO " + name.encode("ascii") + b"\r\n"


def mail_from(
    sender: str,
    *,
    size: int | None = None,
    body: str | None = None,
    smtputf8: bool = False,
    ret: str | None = None,
    envid: str | None = None,
    checked: bool = False,
) -> bytes:
    """MAIL FROM:<sender> with optional SIZE, BODY, SMTPUTF8, RET and ENVID parameters.

    `checked=True`: the caller already ran validate_address on this sender (with the same
    smtputf8), e.g. for the previous message of a stream from one sender."""
    if not checked:
        validate_address(sender, smtputf8=smtputf8, allow_empty=True)
    if size is None and body is None and not smtputf8 and ret is None and envid is None:
        return b"MAIL FROM:<" + sender.encode("ascii") + b">\r\n"
    params: list[str] = []
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise LocalProtocolError(f"SIZE must be a non-negative integer, not {size!r}")
        params.append(f" SIZE={size}")
    if body is not None:
        value = body.upper()
        if value not in _BODY_TYPES:
            raise LocalProtocolError(f"BODY {_show(body)} is not one of 7BIT, 8BITMIME, BINARYMIME")
        params.append(f" BODY={value}")
    if smtputf8:
        params.append(" SMTPUTF8")
    if ret is not None:
        value = ret.upper()
        if value not in _RET_VALUES:
            raise LocalProtocolError(f"RET {_show(ret)} is not one of FULL, HDRS (RFC 3461)")
        params.append(f" RET={value}")
    if envid is not None:
        # RFC 3461 §4.4: the ENVID must be printable US-ASCII before xtext encoding.
        if not envid or not envid.isascii() or not envid.isprintable():
            if envid and not envid.isprintable():
                _refuse_unprintable("ENVID", envid)
            raise LocalProtocolError(
                f"ENVID {_show(envid)} must be non-empty printable ASCII (RFC 3461 §4.4)"
            )
        params.append(f" ENVID={xtext(envid)}")
    line = f"MAIL FROM:<{sender}>{''.join(params)}\r\n"
    return line.encode("utf-8" if smtputf8 else "ascii")


def rcpt_to(
    recipient: str,
    *,
    smtputf8: bool = False,
    notify: Iterable[str] | None = None,
    orcpt: str | None = None,
) -> bytes:
    """RCPT TO:<recipient> with optional DSN parameters NOTIFY and ORCPT (RFC 3461).

    `notify` is "NEVER" alone or any of "SUCCESS", "FAILURE", "DELAY" (a comma-separated
    string is accepted too); values are emitted in a fixed order.
    """
    validate_address(recipient, smtputf8=smtputf8)
    if notify is None and orcpt is None:
        encoding = "utf-8" if smtputf8 else "ascii"
        return b"RCPT TO:<" + recipient.encode(encoding) + b">\r\n"
    params: list[str] = []
    if notify is not None:
        params.append(f" NOTIFY={_notify_value(notify)}")
    if orcpt is not None:
        params.append(f" ORCPT={_orcpt_value(orcpt, smtputf8)}")
    line = f"RCPT TO:<{recipient}>{''.join(params)}\r\n"
    return line.encode("utf-8" if smtputf8 else "ascii")


def _notify_value(notify: Iterable[str]) -> str:
    # A bare string is an Iterable[str] of characters; take it as "SUCCESS,FAILURE".
    items = notify.split(",") if isinstance(notify, str) else notify
    values: set[str] = set()
    for item in items:
        value = item.strip(" ").upper()  # only spaces: a CR/LF must be refused
        if value not in _NOTIFY_ORDER:
            raise LocalProtocolError(
                f"NOTIFY value {_show(item)} is not one of NEVER, SUCCESS, FAILURE, DELAY"
            )
        values.add(value)
    if not values:
        raise LocalProtocolError("NOTIFY needs at least one value (or NEVER)")
    if "NEVER" in values and len(values) > 1:
        raise LocalProtocolError("NOTIFY=NEVER cannot be combined with other values")
    return ",".join(v for v in _NOTIFY_ORDER if v in values)


def _orcpt_value(orcpt: str, smtputf8: bool) -> str:
    if not orcpt:
        raise LocalProtocolError("ORCPT is empty")
    if not orcpt.isprintable():
        _refuse_unprintable("ORCPT", orcpt)
    if orcpt.isascii():
        return "rfc822;" + xtext(orcpt)
    # RFC 6533 §3: a non-ASCII original recipient uses the "utf-8" address type; raw
    # UTF-8 (utf-8-addr-unitext) only when SMTPUTF8 is in use, else \x{HEX} escapes.
    out = ["utf-8;"]
    for ch in orcpt:
        code = ord(ch)
        if (0x21 <= code <= 0x7E and ch not in "+=\\") or (code > 0x7F and smtputf8):
            out.append(ch)
        else:
            out.append(f"\\x{{{code:X}}}")
    return "".join(out)


def data() -> bytes:
    return DATA


def rset() -> bytes:
    return RSET


def noop() -> bytes:
    return NOOP


def quit() -> bytes:
    return QUIT


def starttls() -> bytes:
    return STARTTLS


def bdat(size: int, *, last: bool) -> bytes:
    """BDAT header for a chunk of `size` octets (RFC 3030); the chunk follows it raw."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise LocalProtocolError(f"BDAT size must be a non-negative integer, not {size!r}")
    return b"BDAT %d LAST\r\n" % size if last else b"BDAT %d\r\n" % size


def auth(mechanism: str, initial_response: bytes | None = None) -> bytes:
    """AUTH <mechanism> [initial-response] (RFC 4954); b"" is sent as "="."""
    name = mechanism.upper()
    if not name or len(name) > 20 or not name.isascii() or name.strip(_SASL_NAME_CHARS):
        raise LocalProtocolError(
            f"SASL mechanism name {_show(mechanism)} is invalid "
            "(1-20 characters A-Z, 0-9, '-', '_')"
        )
    if initial_response is None:
        return b"AUTH " + name.encode("ascii") + b"\r\n"
    encoded = binascii.b2a_base64(initial_response, newline=False) if initial_response else b"="
    return b"AUTH " + name.encode("ascii") + b" " + encoded + b"\r\n"


def auth_continue(response: bytes) -> bytes:
    """The base64 line answering a 334 challenge (an empty response is an empty line)."""
    return binascii.b2a_base64(response, newline=False) + b"\r\n"


def xtext(value: str) -> str:
    """Encode `value` as RFC 3461 xtext: "+" and "=", spaces, controls and every octet of
    non-ASCII (UTF-8) text become "+XX"."""
    if _XCHARS.issuperset(value):
        return value
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise LocalProtocolError(f"cannot xtext-encode {_show(value)}: {exc.reason}") from None
    return "".join([_XTEXT_BYTE[b] for b in raw])


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (as a peer sent it); the inverse of `xtext`.

    Raises `RemoteProtocolError` for anything that is not valid xtext of UTF-8 text.
    """
    if _XCHARS.issuperset(value):
        return value
    parts = value.split("+")
    try:
        out = bytearray(parts[0].encode("ascii"))
        for part in parts[1:]:
            if len(part) < 2 or not _HEX_UPPER.issuperset(part[:2]):
                raise ValueError("'+' must be followed by two upper-case hex digits")
            out.append(int(part[:2], 16))
            out += part[2:].encode("ascii")
        if not _XCHARS.issuperset(value.replace("+", "")):
            raise ValueError("it contains characters outside '!'..'~' or a bare '='")
        return out.decode("utf-8")
    except ValueError as exc:  # UnicodeError is a ValueError
        raise RemoteProtocolError(f"invalid xtext {_show(value)}: {exc}") from None
