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
     "ip": "192.0.2.1", "mx": "mx1.example.test", "timings": {"dns": 0.02, ...} (ms),
     "new_session": true, "tls": "resumed", "next_attempt": null}

tls: "full" / "resumed" (this attempt opened a TLS session), "none" (it opened a
plaintext one), "reused" (it ran on a pooled session), null (no session was had).

Never in a line: the message body (Message-ID is read from the header section only) or
any credential (none is passed in; URLs' userinfo is masked in replies, just in case).

Writing: the event loop only formats the line and puts it on a bounded queue; a thread
(logging.handlers.QueueListener) writes it through a RotatingFileHandler. A slow disk
makes the queue fill and lines be dropped (counted in `dropped`), never the loop wait.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxpress.delivery.result import SendResult
    from mxpress.queue.store import AttemptOutcome, QueuedMessage

__all__ = ["DeliveryLog", "message_id_of"]

Clock = Callable[[], float]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_MAX_HEADER = 64 * 1024  # read no further for Message-ID: it is a header, not the body
_MAX_FIELD = 1000
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(.*(?:\r?\n[ \t].*)*)")
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value, read from the header section only: the search
    stops at the first empty line (or 64 KiB), so body text can never be taken."""
    head = data[:_MAX_HEADER]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    if end >= 0:
        head = head[: end + 1]
    elif len(data) > _MAX_HEADER:
        return None  # no end of header section in sight: don't guess
    match = _MESSAGE_ID.search(head)
    if match is None:
        return None
    value = re.sub(rb"\r?\n[ \t]+", b" ", match.group(1)).strip()
    return _clean(value.decode("utf-8", "replace")) or None


def _clean(text: str) -> str:
    return _CONTROLS.sub(" ", text)[:_MAX_FIELD]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


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
        # Bounded by hand, not by Queue(maxsize): QueueListener.stop() must always find
        # room for its sentinel.
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._max_pending = max_pending
        self._listener: QueueListener | None = None
        self._handler: RotatingFileHandler | None = None
        self.records = 0  # lines queued for writing
        self.dropped = 0  # lines dropped: the writer thread fell behind

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._listener is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(
            self.path, maxBytes=self._max_bytes, backupCount=self._backups, encoding="utf-8"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._listener = QueueListener(self._queue, handler)
        self._listener.start()

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the file."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()  # drains the queue first
        if self._handler is not None:
            self._handler.close()
            self._handler = None

    @property
    def running(self) -> bool:
        return self._listener is not None

    # -- records ----------------------------------------------------------------------

    def on_attempt(
        self,
        message: QueuedMessage,
        result: SendResult,
        outcomes: Sequence[AttemptOutcome],
    ) -> None:
        """The scheduler's observer: log each recipient of one recorded attempt."""
        if self._listener is None:
            return
        for record in self.records_for(message, result, outcomes):
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
            # A LogRecord without args: the line is never %-formatted.
            item = logging.makeLogRecord({"msg": line, "levelno": logging.INFO})
            if self._queue.qsize() >= self._max_pending:
                self.dropped += 1
                continue
            self._queue.put_nowait(item)
            self.records += 1

    def records_for(
        self,
        message: QueuedMessage,
        result: SendResult,
        outcomes: Sequence[AttemptOutcome],
    ) -> list[dict[str, Any]]:
        """The log records of one attempt (one per recipient), as dicts."""
        ts = _iso(self._clock())
        message_id = message_id_of(message.data) if message.data is not None else None
        tried = {r.recipient: r.attempts for r in message.recipients}
        timings = {phase: round(s * 1000, 3) for phase, s in result.timings.items()}
        new_session = result.new_sessions > 0
        tls = _tls(result)
        out = []
        for outcome in outcomes:
            r = result.recipients.get(outcome.recipient)
            out.append(
                {
                    "ts": ts,
                    "queue_id": message.id,
                    "message_id": message_id,
                    "sender": message.sender,
                    "recipient": outcome.recipient,
                    "attempt": tried.get(outcome.recipient, 0) + 1,
                    "outcome": str(outcome.state),
                    "reply": _USERINFO.sub(r"\1***@", _clean(outcome.reply)),
                    "host": (r.host if r is not None else None) or outcome.host or None,
                    "ip": r.ip if r is not None else None,
                    "mx": r.mx if r is not None else None,
                    "timings": timings,
                    "new_session": new_session,
                    "tls": tls,
                    "next_attempt": (
                        _iso(outcome.next_attempt) if outcome.next_attempt is not None else None
                    ),
                }
            )
        return out
