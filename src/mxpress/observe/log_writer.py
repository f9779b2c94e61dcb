"""The delivery log's writer thread (see delivery_log.py).

A module of its own: delivery_log.py is compiled (mypyc), and a compiled class that
subclasses `threading.Thread` crashed the garbage collector in the test suite; this one
stays interpreted.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

from mxpress.batch_thread import as_batch_thread


class LineWriter(threading.Thread):
    """Writes queued lines in batches: one write and one flush for everything pending
    (the logging module's handlers flush and stat the file per record: measured at ~12%
    of the relay's CPU under load), rotating by size it counts itself."""

    def __init__(
        self, path: Path, max_bytes: int, backups: int, batches: queue.SimpleQueue[list[str] | None]
    ) -> None:
        super().__init__(name="mxpress-delivery-log", daemon=True)
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._batches = batches
        self._file = path.open("a", encoding="utf-8")
        self._size = self._file.tell()
        self.taken = 0  # lines taken off the queue (written by this thread only)

    def run(self) -> None:
        as_batch_thread()  # woken by the loop, it must not take the loop's core (see there)
        batches = self._batches
        while True:
            batch = batches.get()
            if batch is None:
                self._file.close()
                return
            lines = batch  # the loop no longer holds it
            with contextlib.suppress(queue.Empty):
                while len(lines) < 4096:
                    more = batches.get_nowait()
                    if more is None:
                        batches.put(None)  # stop after this write
                        break
                    lines += more
            self.taken += len(lines)
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        """Whole lines only: a file is rotated between lines, never inside one."""
        chunk: list[str] = []
        chunk_size = 0
        for line in lines:
            size = len(line.encode("utf-8") if not line.isascii() else line) + 1
            if self._size + chunk_size + size > self._max_bytes and self._size + chunk_size:
                self._flush(chunk)
                chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += size
        self._flush(chunk)

    def _flush(self, chunk: list[str]) -> None:
        if not chunk:
            return
        text = "".join(line + "\n" for line in chunk)
        self._file.write(text)
        self._file.flush()
        self._size += len(text.encode("utf-8")) if not text.isascii() else len(text)

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self._backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{n}")
            if older.exists():
                older.replace(self._path.with_name(f"{self._path.name}.{n + 1}"))
        self._path.replace(self._path.with_name(f"{self._path.name}.1"))
        self._file = self._path.open("a", encoding="utf-8")
        self._size = 0
