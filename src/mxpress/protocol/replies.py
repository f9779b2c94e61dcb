"""Incremental SMTP reply parser (RFC 5321 §4.2) with RFC 3463 enhanced status codes.

Sans-IO: bytes in, `Reply` objects out. Fed any split of the stream (one byte at a time
included) it yields the same replies. Line and reply sizes are capped so that a hostile
server cannot make us buffer without bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from mxpress.errors import RemoteProtocolError

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers send longer
# capability and error lines, so the default cap is generous but finite.
DEFAULT_MAX_LINE = 8192
DEFAULT_MAX_LINES = 512

# re.ASCII: \d must not match other scripts' digits.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)", re.ASCII)


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete server reply: a code and its text lines.

    `enhanced` is the RFC 3463 code ("2.1.5") when the first line carries one whose
    class matches the reply code; it is then removed from `lines`.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def ok(self) -> bool:
        """2xx: the command succeeded."""
        return 200 <= self.code < 300

    @property
    def intermediate(self) -> bool:
        """3xx: the server waits for more (354 after DATA, 334 in AUTH)."""
        return 300 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        enhanced = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {enhanced}{self.text}"


def make_reply(code: int, lines: list[str]) -> Reply:
    """Build a Reply, lifting a leading enhanced status code off the first line."""
    enhanced = None
    if lines:
        first = lines[0]
        match = _ENHANCED.match(first)
        if match is not None and match.group(1) == str(code)[0]:
            enhanced = f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}"
            rest = first[match.end() :]
            # Continuation lines repeat the enhanced code; strip it there too.
            stripped = [rest]
            for line in lines[1:]:
                m = _ENHANCED.match(line)
                stripped.append(line[m.end() :] if m is not None else line)
            return Reply(code, tuple(stripped), enhanced)
    return Reply(code, tuple(lines), enhanced)


class ReplyParser:
    """Turns the byte stream from an SMTP server into `Reply` objects.

    Tolerates bare LF line ends (some servers send them) and ignores nothing else:
    anything that is not `DDD[ -]text` is a `RemoteProtocolError`.
    """

    __slots__ = ("_buffer", "_cache", "_code", "_lines", "_max_line", "_max_lines")

    # Servers repeat the same single-line replies ("250 2.1.5 Ok") all session long;
    # replies are immutable, so a small per-parser cache skips decoding and parsing them.
    _CACHE_LIMIT: Final = 64

    def __init__(
        self, *, max_line: int = DEFAULT_MAX_LINE, max_lines: int = DEFAULT_MAX_LINES
    ) -> None:
        self._buffer = b""
        self._cache: dict[bytes, Reply] = {}
        self._code = 0
        self._lines: list[str] = []
        self._max_line = max_line
        self._max_lines = max_lines

    @property
    def pending(self) -> bool:
        """True while a reply has started but is not complete."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes) -> list[Reply]:
        """Add bytes from the server; return every reply they complete, in order."""
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            # The limit counts a line without its line end: allow for the CR of a CRLF.
            if len(rest) > self._max_line and (len(rest) > self._max_line + 1 or rest[-1] != 0x0D):
                raise RemoteProtocolError(
                    f"reply line longer than the {self._max_line}-byte limit without a line end"
                )
            self._buffer = rest
            if not cut:
                return []
            data = data[:cut]
        lines = data.split(b"\n")
        lines.pop()  # the empty piece after the final line end
        replies: list[Reply] = []
        cache = self._cache
        for line in lines:
            if not self._lines:
                cached = cache.get(line)
                if cached is not None:
                    replies.append(cached)
                    continue
            content = line[:-1] if line.endswith(b"\r") else line
            if len(content) > self._max_line:
                raise RemoteProtocolError(
                    f"reply line of {len(content)} bytes exceeds the {self._max_line}-byte limit"
                )
            single = not self._lines
            reply = self._line(content)
            if reply is not None:
                if single and len(cache) < self._CACHE_LIMIT:
                    cache[line] = reply
                replies.append(reply)
        return replies

    def _line(self, line: bytes) -> Reply | None:
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in b" -"):
            raise RemoteProtocolError(f"malformed reply line {line[:80]!r}")
        code = int(line[:3])
        if not 200 <= code < 600:
            raise RemoteProtocolError(f"reply code {code} out of range in {line[:80]!r}")
        if self._lines and code != self._code:
            raise RemoteProtocolError(
                f"multi-line reply changed code from {self._code} to {code}: {line[:80]!r}"
            )
        # Servers are supposed to send ASCII (UTF-8 with SMTPUTF8); never fail on bad bytes.
        text = line[4:].decode("utf-8", "replace")
        if len(self._lines) >= self._max_lines:  # this line would be one too many
            raise RemoteProtocolError(
                f"multi-line reply exceeds {self._max_lines} lines (code {code})"
            )
        if len(line) > 3 and line[3] == 0x2D:  # "-": more lines follow
            self._code = code
            self._lines.append(text)
            return None
        lines = self._lines
        self._lines = []
        lines.append(text)
        return make_reply(code, lines)
