"""A scripted in-memory SMTP peer and stream, for tests that count round trips.

`ScriptedServer` is a small, strict server-side SMTP model (command mode, DATA, BDAT)
whose replies can be programmed per command and per recipient. `ScriptedStream` connects
a `Session` to it without sockets and counts flights: every read that has to wait for
the answer to something written is one round trip.

This is for fault injection and flight counting; behaviour against real servers is
tested against real servers.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from mxpress.errors import ReadError, TLSError
from mxpress.transport.tls import TLSCodec, TLSInfo


@dataclass
class ScriptedMessage:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class ScriptedServer:
    """Programmable SMTP server model. Replies are full lines without CRLF."""

    pipelining: bool = True
    chunking: bool = False
    starttls: bool = False
    size: int | None = 10_240_000
    smtputf8: bool = True
    auth: str | None = None  # e.g. "PLAIN LOGIN"
    extra_ehlo: list[str] = field(default_factory=list)
    banner: str = "220 scripted.test ESMTP"
    ehlo_reply: str | None = None  # replace the whole EHLO reply (e.g. "502 5.5.2 no")
    mail_reply: str = "250 2.1.0 Ok"
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str = "354 End data with <CR><LF>.<CR><LF>"
    final_reply: str = "250 2.0.0 Ok: queued"
    # Called with each command line; a non-None return replaces the normal reply.
    hook: Callable[[str], str | None] | None = None
    messages: list[ScriptedMessage] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    auth_credentials: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self._buffer = b""
        self._mode = "command"
        self._bdat_left = 0
        self._bdat_last = False
        self._body: list[bytes] = []
        self._sender: str | None = None
        self._rcpts: list[str] = []
        self._auth_pending = False
        self.closed = False

    def ehlo_lines(self) -> list[str]:
        caps = ["scripted.test"]
        if self.pipelining:
            caps.append("PIPELINING")
        if self.size is not None:
            caps.append(f"SIZE {self.size}")
        if self.chunking:
            caps.append("CHUNKING")
        if self.starttls:
            caps.append("STARTTLS")
        if self.auth:
            caps.append(f"AUTH {self.auth}")
        if self.smtputf8:
            caps.append("SMTPUTF8")
        caps += ["8BITMIME", "ENHANCEDSTATUSCODES", *self.extra_ehlo]
        return [f"250-{c}" for c in caps[:-1]] + [f"250 {caps[-1]}"]

    def feed(self, data: bytes) -> list[str]:
        """Consume client bytes; return reply lines produced."""
        self._buffer += data
        out: list[str] = []
        while self._buffer and not self.closed:
            if self._mode == "data":
                # In data mode the buffer always starts at the body: it is consumed whole.
                if self._buffer.startswith(b".\r\n"):
                    body, self._buffer = b"", self._buffer[3:]
                else:
                    end = self._buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    body, self._buffer = self._buffer[: end + 2], self._buffer[end + 5 :]
                body = body.replace(b"\r\n..", b"\r\n.")
                if body.startswith(b".."):
                    body = body[1:]
                self._deliver(body, out)
                continue
            if self._mode == "bdat":
                take = min(self._bdat_left, len(self._buffer))
                self._body.append(self._buffer[:take])
                self._buffer = self._buffer[take:]
                self._bdat_left -= take
                if self._bdat_left:
                    break
                self._mode = "command"
                if self._bdat_last:
                    self._deliver(b"".join(self._body), out)
                else:
                    out.append("250 2.0.0 chunk ok")
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[end + 2 :]
            self.commands.append(line)
            out.extend(self._command(line))
        return out

    def _deliver(self, body: bytes, out: list[str]) -> None:
        self._mode = "command"
        accepted = list(self._rcpts)
        if not accepted or self._sender is None:
            out.append("554 5.5.1 Error: no valid recipients")
        else:
            reply = self.final_reply
            if reply.startswith("2"):
                self.messages.append(ScriptedMessage(self._sender, accepted, body))
            out.append(reply)
        self._body = []
        self._sender, self._rcpts = None, []

    def _command(self, line: str) -> list[str]:
        if self.hook is not None:
            custom = self.hook(line)
            if custom is not None:
                if custom.startswith("421"):
                    self.closed = True
                return custom.split("\n")
        if self._auth_pending:
            self._auth_pending = False
            return ["235 2.7.0 Authentication successful"]
        verb = line.split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            self._sender, self._rcpts = None, []
            if self.ehlo_reply is not None and verb == "EHLO":
                return self.ehlo_reply.split("\n")
            return self.ehlo_lines() if verb == "EHLO" else ["250 scripted.test"]
        if verb == "MAIL":
            if self._sender is not None:
                return ["503 5.5.1 Error: nested MAIL command"]
            if self.mail_reply.startswith("2"):
                self._sender = line[10:].split(">", 1)[0].lstrip("<")
            return [self.mail_reply]
        if verb == "RCPT":
            if self._sender is None:
                return ["503 5.5.1 Error: need MAIL command"]
            rcpt = line[8:].split(">", 1)[0].lstrip("<")
            reply = self.rcpt_replies.get(rcpt, "250 2.1.5 Ok")
            if reply.startswith("2"):
                self._rcpts.append(rcpt)
            return [reply]
        if verb == "DATA":
            if self._sender is None or not self._rcpts:
                return ["554 5.5.1 Error: no valid recipients"]
            if self.data_reply.startswith("354"):
                self._mode = "data"
            return [self.data_reply]
        if verb == "BDAT":
            parts = line.split()
            self._bdat_left = int(parts[1])
            self._bdat_last = len(parts) > 2 and parts[2].upper() == "LAST"
            self._mode = "bdat"
            if self._bdat_left == 0:
                self._mode = "command"
                if self._bdat_last:
                    out: list[str] = []
                    self._deliver(b"".join(self._body), out)
                    return out
            return []
        if verb == "RSET":
            self._sender, self._rcpts, self._body = None, [], []
            return ["250 2.0.0 Ok"]
        if verb == "NOOP":
            return ["250 2.0.0 Ok"]
        if verb == "QUIT":
            self.closed = True
            return ["221 2.0.0 Bye"]
        if verb == "AUTH":
            parts = line.split()
            if len(parts) == 2:
                self._auth_pending = True
                return ["334 "]
            return ["235 2.7.0 Authentication successful"]
        if verb == "STARTTLS":
            return ["454 4.7.0 TLS not available in the scripted server"]
        return ["502 5.5.2 Error: command not recognized"]


class ScriptedStream:
    """A `Stream` wired to a ScriptedServer; counts round trips."""

    def __init__(self, server: ScriptedServer, peer: str = "scripted:25") -> None:
        self.server = server
        self.peer = peer
        self.tls_info: TLSInfo | None = None
        self._pending: list[str] = [server.banner]
        self._unanswered = False
        self.round_trips = 0
        self.writes = 0
        self.closed = False

    @property
    def tls(self) -> TLSCodec | None:
        return None

    @property
    def local_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 40000)

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return None

    def write(self, data: bytes) -> None:
        self.writes += 1
        self._unanswered = True
        self._pending.extend(self.server.feed(data))

    async def drain(self) -> None:
        return None

    async def read(self, timeout: float | None, phase: str) -> bytes:
        if self._unanswered:
            self.round_trips += 1
            self._unanswered = False
        if not self._pending:
            raise ReadError(
                "scripted server has nothing to say (the client waits for a reply that "
                "will never come)",
                host=self.peer,
                phase=phase,
            )
        data = "".join(line + "\r\n" for line in self._pending).encode()
        self._pending.clear()
        return data

    async def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        session: ssl.SSLSession | None,
        timeout: float | None,
    ) -> TLSCodec:
        raise TLSError("the scripted stream has no TLS", host=self.peer, phase="tls")

    def is_usable(self) -> bool:
        return not self.closed and not self.server.closed and not self._pending

    def close(self) -> None:
        self.closed = True
