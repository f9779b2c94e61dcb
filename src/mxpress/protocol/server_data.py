"""The message after DATA's 354, as the server receives it: sans-IO (RFC 5321 §4.1.1.4).

`DataReader` takes the receive buffer, consumes what it can and says when the lone "."
line has come. It works on whole chunks, not lines: the end is found with one
`bytes.find` for CRLF "." CRLF, dot-unstuffing is one `replace`, and the 1000-octet line
limit is checked by `check_line_lengths`, which jumps from LF to LF in C. Only the header
section is walked line by line, because HeaderCheck judges each header line.

Line ends: the message ends at CRLF "." CRLF only, and "." is unstuffed only after CRLF,
so a bare LF in the body is kept as sent (delivery makes every line end CRLF before it
dot-stuffs, so "\\n.\\n" cannot end the message downstream). Line lengths are counted
from LF to LF, as delivery will send them.
"""

from __future__ import annotations

from mxpress.protocol.data import check_line_lengths
from mxpress.protocol.server_checks import LINE_TOO_LONG, HeaderCheck, Refusal, too_big

END_OF_DATA = b"\r\n.\r\n"
MAX_LINE = 1000  # octets with the CRLF (RFC 5321 §4.5.3.1.6)
# In drain mode (after a refusal) this much is kept back: the start of an end marker.
_KEEP = len(END_OF_DATA) - 1


class DataReader:
    """Receives one message: unstuffs it, checks it as it comes, finds its end.

    After a refusal the rest is still read up to the end (and dropped at once), so the
    reply comes at the end of the data as RFC 5321 §4.2.5 expects.
    """

    __slots__ = ("_at_line_start", "_header", "_max_size", "_parts", "_size", "refusal")

    def __init__(self, max_size: int, max_header_size: int) -> None:
        self._max_size = max_size
        self._header = HeaderCheck(max_header_size)
        self._parts: list[bytes] = []
        self._size = 0
        self._at_line_start = True  # what was consumed so far ended with CRLF
        self.refusal: Refusal | None = None

    def feed(self, buf: bytes, pos: int) -> tuple[int, bool]:
        """Consume from buf[pos:]; return (position after what was consumed, finished).

        What is not consumed (an incomplete line) must be offered again with more data.
        """
        if self._at_line_start and buf.startswith(b".\r\n", pos):
            end = pos
        else:
            end = buf.find(END_OF_DATA, pos)
            if end >= 0:
                end += 2  # the "." line starts after the CRLF, which is content
        if end >= 0:
            if self.refusal is None and end > pos:
                self._take(buf, pos, end)
            return end + 3, True
        if self.refusal is None:
            # Header lines are judged whole, so their chunks end at CRLF; body chunks at
            # LF (a body with bare LF line ends must not look like one long line).
            # (_take says whether it kept the message: re-reading self.refusal here would
            # trust mypy's narrowing above, which mypyc turns into a type check.)
            kept = True
            if not self._header.done:
                nl = buf.rfind(b"\r\n", pos)
                if nl >= 0:
                    kept = self._take(buf, pos, nl + 2)
                    pos = nl + 2
            if kept and self._header.done:
                nl = buf.rfind(b"\n", pos)
                if nl >= 0:
                    kept = self._take(buf, pos, nl + 1)
                    pos = nl + 1
            if kept and len(buf) - pos >= MAX_LINE:
                self._refuse(LINE_TOO_LONG)  # no line end within the limit
        if self.refusal is None:
            return pos, False
        # Drain: drop all but what may be the start of the end marker. (A marker that
        # began before the kept octets would be complete, and found above.)
        keep = len(buf) - _KEEP
        if keep <= pos:
            return pos, False
        self._at_line_start = False
        return keep, False

    def finish(self) -> tuple[bytes, Refusal | None]:
        """After feed() said finished: the unstuffed message, or why it is refused."""
        if self.refusal is None:
            self.refusal = self._header.finish()
        if self.refusal is not None:
            return b"", self.refusal
        return b"".join(self._parts), None

    def _refuse(self, refusal: Refusal) -> None:
        self.refusal = refusal
        self._parts.clear()  # a refused message is freed at once; the rest is drained

    def _take(self, buf: bytes, start: int, end: int) -> bool:
        """Unstuff, count and check buf[start:end], which ends at a line end.

        Return False if that refused the message.
        """
        at_line_start = self._at_line_start
        self._at_line_start = buf[end - 2 : end] == b"\r\n"
        if at_line_start and buf[start] == 0x2E:  # "."
            start += 1
        chunk = buf[start:end]
        if b"\r\n." in chunk:
            chunk = chunk.replace(b"\r\n.", b"\r\n")
        self._size += len(chunk)
        if self._size > self._max_size:
            self._refuse(too_big(self._max_size))
            return False
        body = 0
        if not self._header.done:
            body = self._header_lines(chunk)
            if self.refusal is not None:
                return False
        if check_line_lengths(chunk[body:] if body else chunk, MAX_LINE - 2) is not None:
            self._refuse(LINE_TOO_LONG)
            return False
        self._parts.append(chunk)
        return True

    def _header_lines(self, chunk: bytes) -> int:
        """Feed the header lines of `chunk` to the check; return where the body starts."""
        header = self._header
        start = 0
        while not header.done:
            nl = chunk.find(b"\r\n", start)
            if nl < 0:
                return len(chunk)  # (cannot happen: header chunks end at CRLF)
            line = chunk[start : nl + 2]
            refusal = LINE_TOO_LONG if len(line) > MAX_LINE else header.feed(line)
            if refusal is not None:
                self._refuse(refusal)
                return len(chunk)
            start = nl + 2
        return start
