"""The delivery log: one JSON line per recipient per delivery attempt.

    log = DeliveryLog(data_dir / "delivery.jsonl", max_bytes=50 << 20, backups=5)
    log.start()
    scheduler = Scheduler(..., observer=log.on_attempt)
    ...
    log.close()          # after the scheduler stopped: the last attempts are written

A line (keys always present; null when unknown):

    {"ts": "2025-01-02T03:04:05.678Z", "queue_id": "...", "message_id": "<a@b>",
     "sender": "app@x.test", "recipient": "user@example.test", "attempt": 1,
     "outcome": "delivered", "reply": "250 2.0.0 OK", "host": "mx1.example.test:25",
     "ip": "192.0.2.1", "mx": "mx1.example.test", "timings": {"dns_mx": 0.02, ...} (ms),
     "new_session": true, "tls": "resumed", "next_attempt": null}

tls: "full" / "resumed" (this attempt opened a TLS session), "none" (it opened a
plaintext one), "reused" (it ran on a pooled session), null (no session was had).

Never in a line: the message body (Message-ID is read from the header section only) or
any credential (none is passed in; URLs' userinfo is masked in replies, just in case).

Writing: the event loop only formats the line; every 50 ms (or 512 lines) it hands what
it has to a thread that writes it and rotates the file. A slow disk makes the queue fill
and lines be dropped (counted in `dropped`), never the loop wait.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mxpress.delivery.router import domain_of
from mxpress.errors import MxpressError
from mxpress.observe.log_writer import LineWriter
from mxpress.rfc3339 import utc_millis

if TYPE_CHECKING:
    from mxpress.delivery.result import SendResult
    from mxpress.queue.store import AttemptOutcome, QueuedMessage

__all__ = ["DeliveryLog", "message_id_of"]

Clock = Callable[[], float]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_HAND_OVER_EVERY = 0.05  # seconds a line may wait for the writer thread (a crash loses them)
_HAND_OVER_LINES = 512  # or as many lines, whichever comes first
_MAX_HEADER = 64 * 1024  # read no further for Message-ID: it is a header, not the body
_MAX_FIELD = 1000
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)")
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_FOLD = re.compile(rb"\r?\n[ \t]+")  # a folded header line's break


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value, read from the header section only: the search
    stops at the first empty line (or 64 KiB), so body text can never be taken."""
    end = data.find(b"\r\n\r\n", 0, _MAX_HEADER)  # bounds, not a slice: no copy
    if end < 0:
        end = data.find(b"\n\n", 0, _MAX_HEADER)
    if end >= 0:
        head = data[: end + 1]
    elif len(data) > _MAX_HEADER:
        return None  # no end of header section in sight: don't guess
    else:
        head = data
    match = _MESSAGE_ID.search(head)
    if match is None:
        return None
    value = _FOLD.sub(b" ", match.group(1)).strip()
    return _clean(value.decode("utf-8", "replace")) or None


def _clean(text: str) -> str:
    if not text.isprintable():  # every control character is unprintable
        text = _CONTROLS.sub(" ", text)
    return text[:_MAX_FIELD]


class _Timestamps:
    """`utc_millis` with the date and time part built once a second (every line has a ts)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, epoch: float) -> str:
        second = math.floor(epoch)
        micros = round((epoch - second) * 1e6)  # as datetime rounds, then truncated to ms
        if micros >= 1_000_000:
            second, micros = second + 1, 0
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{micros // 1000:03d}Z"


def _tls(result: SendResult) -> str | None:
    if result.new_sessions:
        if result.tls_resumed:
            return "resumed"
        return "full" if result.tls_full else "none"
    return "reused" if result.reused_sessions else None


class DeliveryLog:
    """Writes delivery records as JSON lines, with size-based rotation (see module doc)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = 5,
        clock: Clock = time.time,
        max_pending: int = 100_000,
    ) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._backups = backups
        self._clock = clock
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._max_pending = max_pending
        self._writer: LineWriter | None = None
        # Lines go to the writer thread in batches, not one by one: each hand-over may
        # wake the thread, and each wake-up takes a turn at the GIL (measured: ~5% of
        # the relay's CPU per message under load).
        self._batch: list[str] = []
        self._handed = 0  # lines put on the queue
        self._timer: asyncio.TimerHandle | None = None
        self.records = 0  # lines queued for writing
        self.dropped = 0  # lines dropped: the writer thread fell behind
        self._timestamps = _Timestamps()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = LineWriter(self.path, self._max_bytes, self._backups, self._queue)
        self._writer.start()

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the file."""
        self._hand_over()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put(None)  # after everything queued: the writer stops there
            writer.join()

    @property
    def running(self) -> bool:
        return self._writer is not None

    # -- records ----------------------------------------------------------------------

    def on_attempt(
        self,
        message: QueuedMessage,
        result: SendResult,
        outcomes: Sequence[AttemptOutcome],
    ) -> None:
        """The scheduler's observer: log each recipient of one recorded attempt."""
        writer = self._writer
        if writer is None:
            return
        batch = self._batch
        for line in self.lines_for(message, result, outcomes):
            # Lines waiting for the thread, on the queue or in the batch.
            if self._handed - writer.taken + len(batch) >= self._max_pending:
                self.dropped += 1
                continue
            batch.append(line)
            self.records += 1
        if len(batch) >= _HAND_OVER_LINES:
            self._hand_over()
            return
        if not batch or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop: no timer, hand over now
            self._hand_over()
            return
        self._timer = loop.call_later(_HAND_OVER_EVERY, self._hand_over)

    def _hand_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._batch:
            batch, self._batch = self._batch, []
            self._handed += len(batch)
            self._queue.put(batch)

    def records_for(
        self,
        message: QueuedMessage,
        result: SendResult,
        outcomes: Sequence[AttemptOutcome],
    ) -> list[dict[str, Any]]:
        """The log records of one attempt (one per recipient), as dicts."""
        return [json.loads(line) for line in self.lines_for(message, result, outcomes)]

    def lines_for(
        self,
        message: QueuedMessage,
        result: SendResult,
        outcomes: Sequence[AttemptOutcome],
    ) -> list[str]:
        """The log lines of one attempt (one per recipient), as JSON text.

        Built from string pieces rather than a dict and an encoder: this runs on the event
        loop for every recipient, and the pieces common to an attempt are made once."""
        ts = self._timestamps.iso(self._clock())
        message_id = message_id_of(message.data) if message.data is not None else None
        tried = {r.recipient: r.attempts for r in message.recipients}
        timings = _timings(result.timings)
        head = (
            f'{{"ts":"{ts}","queue_id":{_string(message.id)},'
            f'"message_id":{_nullable(message_id)},"sender":{_string(message.sender)},'
        )
        session = (
            f'"new_session":{"true" if result.new_sessions > 0 else "false"},'
            f'"tls":{_nullable(_tls(result))},'
        )
        out = []
        for outcome in outcomes:
            rcpt = outcome.recipient
            r = result.recipients.get(rcpt)
            host = (r.host if r is not None else None) or outcome.host or None
            next_attempt = outcome.next_attempt
            out.append(
                f'{head}"recipient":{_string(rcpt)},"attempt":{tried.get(rcpt, 0) + 1},'
                f'"outcome":{_string(str(outcome.state))},"reply":{_string(_reply(outcome.reply))},'
                f'"host":{_nullable(host)},"ip":{_nullable(r.ip if r is not None else None)},'
                f'"mx":{_nullable(r.mx if r is not None else None)},"timings":{timings},'
                f'"dns_cache":{_nullable(_dns_cache(result, rcpt))},{session}'
                f'"next_attempt":'
                f"{'null' if next_attempt is None else _string(utc_millis(next_attempt))}}}"
            )
        return out


# A JSON string literal, non-ASCII kept as is (the encoder's ensure_ascii=False).
_string: Callable[[str], str] = encode_basestring


def _timings(timings: dict[str, float]) -> str:
    """The phases' timings as a JSON object of milliseconds, written by hand: the
    encoder's Python-level wrappers cost more than the numbers. A non-finite one (never
    measured so) is null rather than the encoder's non-JSON NaN."""
    return (
        "{"
        + ",".join(
            f"{_string(phase)}:{round(s * 1000, 3) if math.isfinite(s) else 'null'}"
            for phase, s in timings.items()
        )
        + "}"
    )


def _nullable(text: str | None) -> str:
    return "null" if text is None else _string(text)


def _reply(text: str) -> str:
    """A reply as logged: controls blanked, at most _MAX_FIELD characters, and any URL's
    userinfo masked (the regular expressions run only when they can find something)."""
    if not text.isprintable():  # every control character is unprintable
        text = _CONTROLS.sub(" ", text)
    text = text[:_MAX_FIELD]
    return _USERINFO.sub(r"\1***@", text) if "://" in text else text


def _dns_cache(result: SendResult, recipient: str) -> str | None:
    """hit / miss / stale for the recipient's domain's MX answer (None: no DNS, a relay)."""
    if not result.dns:
        return None
    try:
        return result.dns.get(domain_of(recipient))
    except MxpressError:
        return None
