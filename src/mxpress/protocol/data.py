"""Message body framing: CRLF normalisation, dot-stuffing (RFC 5321 §4.5.2), BDAT chunks.

Every function has a fast path for the common case (an already clean message) that
scans in C and returns the input object itself, so a well-formed message is not copied.
"""

from __future__ import annotations

_CR = 13
_LF = 10
END_OF_DATA = b".\r\n"


def normalize_crlf(data: bytes) -> bytes:
    """Turn bare LF and bare CR into CRLF and make the data end with CRLF.

    Empty data stays empty. Clean input is returned as is (same object).
    """
    if not data:
        return data
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\n") and crlf == data.count(b"\r"):
        return data if data.endswith(b"\r\n") else data + b"\r\n"
    # CRLF -> LF first so that the CR of a CRLF is not doubled, then every CR / LF -> CRLF.
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def dot_stuff(data: bytes) -> bytes:
    """Double the leading "." of every line (input already CRLF-normalised)."""
    if b"\n." not in data and not data.startswith(b"."):
        return data
    stuffed = data.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


def encode_data(data: bytes) -> bytes:
    """The bytes to send after the 354 reply: normalised, dot-stuffed, ".\\r\\n"-terminated."""
    return dot_stuff(normalize_crlf(data)) + END_OF_DATA


def needs_8bit(data: bytes) -> bool:
    """True if any octet is >= 0x80 (the message needs 8BITMIME, or SMTPUTF8 headers)."""
    return not data.isascii()


def chunks(data: bytes, size: int) -> list[memoryview | bytes]:
    """Split `data` into pieces of at most `size` octets for BDAT, without copying.

    Always at least one piece (empty data gives [b""], sent as "BDAT 0 LAST"), so the
    caller can mark the last piece LAST without a special case.
    """
    if size <= 0:
        raise ValueError(f"chunk size must be positive, not {size}")
    if len(data) <= size:
        return [data]
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(data), size)]


def check_line_lengths(data: bytes, limit: int = 998) -> int | None:
    """Return the 1-based number of the first line longer than `limit` octets (not
    counting its CRLF or LF), or None when every line fits (RFC 5321 §4.5.3.1.6).

    Lines end at LF; a CR just before an LF or at the very end is not counted.

    Jumps up to `limit` octets at a time with rfind instead of visiting every line.
    """
    if limit < 0:
        raise ValueError(f"line length limit must not be negative, not {limit}")
    size = len(data)
    start = 0  # start of a line not yet known to fit
    while size - start > limit:
        window_end = start + limit + 1
        newline = data.rfind(b"\n", start, window_end)
        if newline >= 0:
            start = newline + 1  # every line up to here fits inside the window
            continue
        # No LF in the next limit+1 octets: too long, unless they are limit octets + the
        # CR of a CRLF (or a final CR, which normalize_crlf turns into CRLF).
        if data[window_end - 1] == _CR and (window_end == size or data[window_end] == _LF):
            start = window_end + 1
            continue
        return data.count(b"\n", 0, start) + 1
    return None
