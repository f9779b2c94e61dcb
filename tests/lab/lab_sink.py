"""Postfix smtp-sink on loopback: a fast receiver that throws mail away and counts it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tests.lab.lab_common import (
    LabError,
    LabServer,
    _is_listening,
    _tail,
    _terminate,
    _wait_until,
    check_loopback,
    free_port,
    require_binary,
)

__all__ = ["SmtpSink", "smtp_sink"]


class SmtpSink(LabServer):
    """A running `smtp-sink`. It throws mail away and counts it.

    Counting: smtp-sink runs with -c, which writes "sess=N quit=N mesg=N" records separated by
    CR to stdout after every session end, QUIT and end-of-data; stdout goes to `count_file`
    and the last complete record is the current count."""

    def __init__(
        self,
        host: str,
        port: int,
        proc: subprocess.Popen[bytes],
        count_file: Path,
        stderr_file: Path,
        tmpdir: Path | None,
    ) -> None:
        self.host, self.port = host, port
        self.proc = proc
        self.count_file = count_file
        self.stderr_file = stderr_file
        self._tmpdir = tmpdir
        self._register()

    def counters(self) -> dict[str, int]:
        """The latest counters: {"sess": sessions, "quit": QUITs, "mesg": messages}."""
        try:
            with open(self.count_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256))
                tail = f.read()
        except OSError:
            return {"sess": 0, "quit": 0, "mesg": 0}
        # Only records followed by CR are complete; the writer may be mid-record.
        records = tail.split(b"\r")[:-1]
        for record in reversed(records):
            fields = dict(item.split(b"=", 1) for item in record.split() if b"=" in item)
            try:
                return {k.decode(): int(v) for k, v in fields.items()}
            except ValueError:
                continue
        return {"sess": 0, "quit": 0, "mesg": 0}

    def message_count(self) -> int:
        return self.counters().get("mesg", 0)

    def session_count(self) -> int:
        return self.counters().get("sess", 0)

    def stop(self) -> None:
        _terminate(self.proc)
        self._unregister()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def smtp_sink(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    count_file: str | os.PathLike[str] | None = None,
    hostname: str | None = None,
    backlog: int = 1024,
    extra_args: Iterable[str] = (),
    ready_timeout: float = 10.0,
) -> SmtpSink:
    """Start Postfix `smtp-sink` on host:port (port 0: pick a free one) and wait until it listens.

    It advertises PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, DSN, XCLIENT/XFORWARD and a fake
    AUTH PLAIN LOGIN (it answers any AUTH with 250, not 235; "-a" hides it), and not CHUNKING
    (BDAT gets "500 5.5.1 unknown command"). Its EHLO reply ends with an empty "250 " line.
    `extra_args` go to smtp-sink before the address, e.g. ("-p",) to drop PIPELINING, ("-r",
    "RCPT") to 4xx every RCPT, ("-Q", "DATA") to send 421 and hang up at DATA. `count_file`
    keeps the counter output (a temp file if None)."""
    check_loopback(host)
    binary = require_binary("smtp-sink")
    tmpdir = Path(tempfile.mkdtemp(prefix="mxpress-sink-"))
    counts = Path(count_file) if count_file is not None else tmpdir / "counts"
    stderr_path = tmpdir / "stderr"
    attempts = 3 if port == 0 else 1
    for attempt in range(attempts):
        chosen = port or free_port(host)
        argv = [binary, "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep running as root
        if hostname:
            argv += ["-h", hostname]
        argv += [*extra_args, f"{host}:{chosen}", str(backlog)]
        with open(counts, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        if (
            _wait_until(
                lambda: proc.poll() is not None or _is_listening(host, chosen),  # noqa: B023
                ready_timeout,
            )
            and proc.poll() is None
        ):
            return SmtpSink(host, chosen, proc, counts, stderr_path, tmpdir)
        _terminate(proc)
        error = _tail(stderr_path)
        if attempt + 1 < attempts and "in use" in error.lower():
            continue  # lost the race for the free port; pick another
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise LabError(
            f"smtp-sink {' '.join(argv)} did not start listening: {error or 'no output'}"
        )
    raise AssertionError("unreachable")
