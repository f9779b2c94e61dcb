"""Sans-IO SMTP transaction engine: plans pipelined flights per RFC 2920 and RFC 3030.

The driver (client/session.py) runs this loop; the engine never touches I/O or clocks
(times are passed in as plain floats so the results can carry phase timings):

    engine = TransactionEngine(messages, capabilities)
    while True:
        flight = engine.outgoing(now)     # bytes for one write; may be empty
        if flight: write(flight)
        if engine.done: break
        for reply in parser.feed(await read()):
            engine.receive(reply, now)

Flight plans (one flight = one write, then wait for replies):
- PIPELINING:            [RSET] MAIL RCPT.. DATA   | body + next MAIL RCPT.. DATA | ...
                         (a stream of messages costs about one round trip each)
- PIPELINING + CHUNKING: [RSET] MAIL RCPT.. BDAT n LAST + body | next ...
                         (one round trip per message)
- neither:               one command per round trip.
A message with no accepted recipient is never sent: DATA is refused by the server (we
pipelined it) or not sent at all (lock-step); the engine then schedules an RSET.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from mxpress.errors import (
    DeliveryError,
    LocalProtocolError,
    MxpressError,
    PermanentDeliveryError,
    RemoteProtocolError,
    error_for_reply,
)
from mxpress.protocol import commands
from mxpress.protocol.data import encode_data, normalize_crlf
from mxpress.protocol.extensions import Capabilities
from mxpress.protocol.replies import Reply

# Bodies above this size are not sent speculatively with BDAT before the RCPT replies
# are known; they go through DATA (354 gates the body) so refused mail costs no upload.
SPECULATIVE_BDAT_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: the envelope and the RFC 5322 bytes."""

    sender: str
    recipients: Sequence[str]
    data: bytes
    ret: str | None = None
    envid: str | None = None
    notify: Sequence[str] | None = None


@dataclass(slots=True)
class TransactionResult:
    """What the server said about one message, per recipient."""

    sender: str
    recipients: dict[str, Reply | None] = field(default_factory=dict)
    mail_reply: Reply | None = None
    data_reply: Reply | None = None
    error: MxpressError | None = None
    # True once the body was written: after a broken connection it may have been delivered.
    body_sent: bool = False
    # Phase durations in seconds: mail, rcpt, data, end_of_data (as the driver measured).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.data_reply is not None and self.data_reply.ok

    @property
    def accepted(self) -> list[str]:
        if not self.ok:
            return []
        return [r for r, reply in self.recipients.items() if reply is not None and reply.ok]

    @property
    def rejected(self) -> dict[str, Reply | None]:
        """Recipients not delivered, each with the reply that refused it (None: not tried)."""
        if not self.ok:
            return {r: self.reply_for(r) for r in self.recipients}
        return {r: rep for r, rep in self.recipients.items() if rep is None or not rep.ok}

    def reply_for(self, recipient: str) -> Reply | None:
        """The reply that decided this recipient's fate."""
        rcpt = self.recipients.get(recipient)
        if rcpt is not None and rcpt.ok and self.mail_reply is not None and self.mail_reply.ok:
            return self.data_reply
        if rcpt is None and self.mail_reply is not None and not self.mail_reply.ok:
            return self.mail_reply
        return rcpt


class _Kind(Enum):
    RSET = "rset"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end_of_data"
    BDAT = "bdat"


_STAMPED = frozenset({_Kind.MAIL, _Kind.END_OF_DATA, _Kind.BDAT})


class _Txn:
    """Progress of one message through the engine."""

    __slots__ = (
        "accepted",
        "body_sent_at",
        "completed",
        "data_reply_at",
        "index",
        "mail_at",
        "mail_reply_at",
        "message",
        "rcpt_reply_at",
        "rcpts_pending",
        "result",
        "use_bdat",
    )

    def __init__(self, message: Outgoing, use_bdat: bool, index: int) -> None:
        self.index = index
        self.completed = False
        self.message = message
        self.result = TransactionResult(message.sender, dict.fromkeys(message.recipients))
        self.use_bdat = use_bdat
        self.rcpts_pending = len(message.recipients)
        self.mail_at = 0.0
        self.mail_reply_at = 0.0
        self.rcpt_reply_at = 0.0
        self.data_reply_at = 0.0
        self.body_sent_at = 0.0
        self.accepted = 0  # recipients the server took at RCPT

    @property
    def any_accepted(self) -> bool:
        return self.accepted > 0


class TransactionEngine:
    """Sends a stream of messages over one established SMTP session."""

    def __init__(
        self,
        messages: Sequence[Outgoing],
        capabilities: Capabilities,
        *,
        needs_rset: bool = False,
        host: str | None = None,
        speculative_bdat_limit: int = SPECULATIVE_BDAT_LIMIT,
        source: Callable[[], Sequence[Outgoing]] | None = None,
        on_result: Callable[[int, TransactionResult], None] | None = None,
    ) -> None:
        """`messages` are sent in order; then, while `source` returns more, those too (a
        stream fed by independent senders). `on_result(index, result)` is called as each
        message's fate is known; without it the engine keeps every result in `results`."""
        self._caps = capabilities
        self._host = host
        self._pipelining = capabilities.pipelining
        self._bdat_limit = speculative_bdat_limit if capabilities.chunking else -1
        self._source = source
        self._on_result = on_result
        self._count = 0  # messages taken so far: the next one's index
        self._kept: list[_Txn] = []
        self._open: dict[int, _Txn] = {}  # taken and not yet complete
        self._waiting: deque[_Txn] = deque([self._prepare(m) for m in messages])
        self._any_body_sent = False
        self._checked_sender: tuple[str, bool] | None = None
        self._stamp: list[tuple[_Kind, _Txn]] = []  # written next flight: time to stamp
        self._expect: deque[tuple[_Kind, _Txn | None, str]] = deque()
        self._out: list[bytes] = []
        self._needs_rset = needs_rset
        # Lock-step (no PIPELINING) keeps the commands still to send for the current message.
        self._lockstep: deque[tuple[_Kind, bytes, str]] = deque()
        self._current: _Txn | None = None
        self._start_next()

    # -- driver interface ---------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self._expect and not self._out

    @property
    def needs_rset(self) -> bool:
        """True when the server may still hold an open transaction (send RSET before MAIL)."""
        return self._needs_rset

    @property
    def body_sent(self) -> bool:
        """True once any message body (end of data or BDAT) has been written: from then on
        a broken connection may have delivered it, so a blind retry could duplicate it."""
        return self._any_body_sent

    @property
    def phase(self) -> str:
        """What the oldest outstanding reply answers; the driver picks its timeout by it."""
        return self._expect[0][0].value if self._expect else "idle"

    @property
    def results(self) -> list[TransactionResult]:
        """Every message's result, in order (only when no `on_result` was given)."""
        return [t.result for t in self._kept]

    def incomplete(self) -> list[tuple[int, TransactionResult]]:
        """Messages taken whose fate is not known (e.g. after the connection broke)."""
        return [(t.index, t.result) for t in self._open.values()]

    def outgoing(self, now: float = 0.0) -> bytes:
        """The next flight to write (b"" when the engine waits for replies)."""
        if not self._out:
            return b""
        # Stamp what this flight starts: a MAIL (the message's start), a body (sent).
        for kind, txn in self._stamp:
            if kind is _Kind.MAIL:
                txn.mail_at = now
            else:
                txn.body_sent_at = now
                txn.result.body_sent = True
                self._any_body_sent = True
        self._stamp.clear()
        out = self._out
        flight = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return flight

    def receive(self, reply: Reply, now: float = 0.0) -> None:
        """Account one reply from the server against the oldest outstanding command."""
        if not self._expect:
            raise RemoteProtocolError(
                f"unexpected reply with no command outstanding: {reply}", host=self._host
            )
        kind, txn, recipient = self._expect.popleft()
        if reply.code == 421:  # the server is closing the session (RFC 5321 §3.8)
            raise error_for_reply(
                "server is closing the session", reply, host=self._host, phase=kind.value
            )
        if txn is None:  # RSET: a failure here means the session is unusable
            if not reply.ok:
                raise error_for_reply("RSET refused", reply, host=self._host, phase="rset")
            self._needs_rset = False
            if not self._expect and not self._out:
                self._advance()
            return
        if kind is _Kind.MAIL:
            txn.result.mail_reply = reply
            txn.mail_reply_at = now
            if reply.ok:
                self._needs_rset = True
                if not self._pipelining:
                    self._lockstep_next()
            elif not self._pipelining:
                self._fail(txn, "sender refused", reply, "mail")
                self._complete(txn)
                self._lockstep.clear()
                self._start_next()
        elif kind is _Kind.RCPT:
            txn.result.recipients[recipient] = reply
            if reply.ok:
                txn.accepted += 1
            txn.rcpts_pending -= 1
            if txn.rcpts_pending == 0:
                txn.rcpt_reply_at = now
            if not self._pipelining:
                self._lockstep_rcpt_done(txn)
        elif kind is _Kind.DATA:
            txn.data_reply_at = now
            self._on_data_reply(txn, reply)
        else:  # END_OF_DATA or BDAT LAST: the final reply
            self._finish(txn, reply, now)
            if kind is _Kind.BDAT or not self._pipelining:
                self._advance()
            elif not self._expect and not self._out:
                # After DATA the next message rode with the body; if there was none then,
                # the source may have one now.
                self._start_next()

    # -- planning -------------------------------------------------------------------

    def _prepare(self, message: Outgoing) -> _Txn:
        use_bdat = 0 <= len(message.data) <= self._bdat_limit
        txn = _Txn(message, use_bdat, self._count)
        self._count += 1
        self._open[txn.index] = txn
        if self._on_result is None:
            self._kept.append(txn)
        if not message.recipients:
            txn.result.error = LocalProtocolError("message has no recipients", host=self._host)
            return txn
        limit = self._caps.size
        if limit and len(message.data) > limit:
            txn.result.error = PermanentDeliveryError(
                f"message of {len(message.data)} bytes exceeds the server's SIZE limit "
                f"of {limit} bytes; nothing was sent",
                host=self._host,
                phase="mail",
            )
        return txn

    def _commands(self, txn: _Txn) -> list[tuple[_Kind, bytes, str]]:
        """The MAIL/RCPT/(DATA | BDAT) commands of one message; may raise LocalProtocolError."""
        msg = txn.message
        smtputf8 = not (msg.sender.isascii() and all(r.isascii() for r in msg.recipients))
        if not smtputf8 and self._caps.smtputf8:
            # Unicode in the header section also needs SMTPUTF8 (RFC 6531 §3.2).
            smtputf8 = not _header_section(msg.data).isascii()
        if smtputf8 and not self._caps.smtputf8:
            raise LocalProtocolError(
                "the envelope has non-ASCII addresses but the server does not offer SMTPUTF8",
                host=self._host,
            )
        body = None
        if not msg.data.isascii() and self._caps.eightbitmime:
            body = "8BITMIME"
        # A stream usually comes from one sender: validate it once, not per message.
        checked = self._checked_sender == (msg.sender, smtputf8)
        mail = commands.mail_from(
            msg.sender,
            size=len(msg.data) if self._caps.size is not None else None,
            body=body,
            smtputf8=smtputf8,
            ret=msg.ret if self._caps.dsn else None,
            envid=msg.envid if self._caps.dsn else None,
            checked=checked,
        )
        self._checked_sender = (msg.sender, smtputf8)
        notify = msg.notify if self._caps.dsn else None
        cmds = [(_Kind.MAIL, mail, "")]
        cmds.extend(
            (_Kind.RCPT, commands.rcpt_to(r, smtputf8=smtputf8, notify=notify), r)
            for r in msg.recipients
        )
        if txn.use_bdat:
            payload = normalize_crlf(msg.data)
            cmds.append((_Kind.BDAT, commands.bdat(len(payload), last=True) + payload, ""))
        else:
            cmds.append((_Kind.DATA, commands.data(), ""))
        return cmds

    def _start_next(self) -> None:
        """Queue the next startable message (skipping ones that failed before sending)."""
        while True:
            if not self._waiting and self._source is not None:
                self._waiting.extend([self._prepare(m) for m in self._source()])
            if not self._waiting:
                break
            txn = self._waiting.popleft()
            if txn.result.error is not None:
                self._complete(txn)
                continue
            try:
                cmds = self._commands(txn)
            except LocalProtocolError as exc:
                exc.host = exc.host or self._host
                txn.result.error = exc
                self._complete(txn)
                continue
            if self._needs_rset:
                self._send(_Kind.RSET, commands.rset(), None, "")
            if self._pipelining:
                for kind, line, rcpt in cmds:
                    self._send(kind, line, txn, rcpt)
            else:
                self._current = txn
                self._lockstep.extend(cmds)
                if not self._needs_rset:
                    self._lockstep_next()
            return
        # Nothing left. A pending RSET is left to the next engine on this session,
        # which pipelines it with its first MAIL instead of paying a round trip now.

    def _advance(self) -> None:
        if self._lockstep:
            self._lockstep_next()
        else:
            self._start_next()

    def _send(self, kind: _Kind, line: bytes, txn: _Txn | None, rcpt: str) -> None:
        self._out.append(line)
        self._expect.append((kind, txn, rcpt))
        if txn is not None and kind in _STAMPED:
            self._stamp.append((kind, txn))

    # -- lock-step (server without PIPELINING) ---------------------------------------

    def _lockstep_next(self) -> None:
        kind, line, rcpt = self._lockstep.popleft()
        self._send(kind, line, self._current, rcpt)

    def _lockstep_rcpt_done(self, txn: _Txn) -> None:
        if txn.rcpts_pending or txn.any_accepted:
            self._lockstep_next()  # the next RCPT, or DATA / BDAT
            return
        # Nobody accepted: don't send DATA; an RSET precedes the next MAIL.
        self._lockstep.clear()
        self._fail_no_recipients(txn)
        self._complete(txn)
        self._start_next()

    # -- replies to DATA and end of data ------------------------------------------------

    def _on_data_reply(self, txn: _Txn, reply: Reply) -> None:
        if reply.code == 354:
            # The end of data closes the transaction whatever its reply (RFC 5321 §4.1.1.4).
            self._needs_rset = False
            if txn.any_accepted:
                self._send(_Kind.END_OF_DATA, encode_data(txn.message.data), txn, "")
            else:
                # The server accepted DATA with nobody to deliver to: end it empty.
                self._send(_Kind.END_OF_DATA, b".\r\n", txn, "")
                self._fail_no_recipients(txn)
            if self._pipelining:
                self._start_next()  # the next message rides in the same flight as this body
            return
        if txn.any_accepted:
            self._fail(txn, "DATA refused", reply, "data")
        else:
            self._fail_no_recipients(txn)
        self._complete(txn)
        self._advance()

    def _finish(self, txn: _Txn, reply: Reply, now: float) -> None:
        result = txn.result
        result.data_reply = reply
        # A refused BDAT may leave the transaction open on some servers: reset to be sure.
        mail_ok = result.mail_reply is not None and result.mail_reply.ok
        self._needs_rset = txn.use_bdat and not reply.ok and mail_ok
        if result.error is None and not reply.ok:
            if txn.any_accepted:
                phase = "bdat" if txn.use_bdat else "end_of_data"
                result.error = error_for_reply(
                    "message refused",
                    reply,
                    host=self._host,
                    phase=phase,
                    recipients=_replies(result),
                )
            else:
                self._fail_no_recipients(txn)
        self._record_timings(txn, now)
        self._complete(txn)

    def _complete(self, txn: _Txn) -> None:
        if txn.completed:
            return
        txn.completed = True
        if not txn.result.timings:
            # Ended without an end of data (every recipient refused, DATA refused): the
            # replies that did come still say where the time went.
            self._record_timings(txn, None)
        del self._open[txn.index]
        if self._on_result is not None:
            self._on_result(txn.index, txn.result)

    def _fail(self, txn: _Txn, what: str, reply: Reply, phase: str) -> None:
        result = txn.result
        if result.error is None:
            result.error = error_for_reply(
                what, reply, host=self._host, phase=phase, recipients=_replies(result)
            )

    def _fail_no_recipients(self, txn: _Txn) -> None:
        result = txn.result
        if result.error is not None:
            return
        mail = result.mail_reply
        if mail is not None and not mail.ok:
            self._fail(txn, "sender refused", mail, "mail")
            return
        refusals = [r for r in result.recipients.values() if r is not None]
        # The transaction is permanent only if every recipient was refused permanently.
        worst = next((r for r in refusals if r.transient), refusals[0] if refusals else None)
        if worst is None:
            result.error = DeliveryError("no recipient was accepted", host=self._host)
        else:
            result.error = error_for_reply(
                "all recipients refused",
                worst,
                host=self._host,
                phase="rcpt",
                recipients=_replies(result),
            )

    def _record_timings(self, txn: _Txn, now: float | None) -> None:
        """Phase times; `now` is the final reply's arrival, None if there was none (the
        total then ends at the last reply that came)."""
        t = txn.result.timings
        if not txn.mail_at or not txn.mail_reply_at:
            return
        t["mail"] = max(0.0, txn.mail_reply_at - txn.mail_at)
        if txn.rcpt_reply_at:
            t["rcpt"] = max(0.0, txn.rcpt_reply_at - txn.mail_reply_at)
        if txn.data_reply_at:
            t["data"] = max(0.0, txn.data_reply_at - (txn.rcpt_reply_at or txn.mail_reply_at))
        if now is not None:
            t["end_of_data"] = max(0.0, now - (txn.body_sent_at or txn.mail_at))
        end = (
            now if now is not None else max(txn.data_reply_at, txn.rcpt_reply_at, txn.mail_reply_at)
        )
        t["total"] = max(0.0, end - txn.mail_at)


def _replies(result: TransactionResult) -> dict[str, Reply]:
    return {r: rep for r, rep in result.recipients.items() if rep is not None}


def _header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    return data if end < 0 else data[:end]
