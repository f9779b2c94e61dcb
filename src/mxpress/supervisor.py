"""`mxpress serve` with `server.workers` > 1: one relay process per worker, and this
process watching them (like Postfix's master, much smaller).

Why processes: one relay process is bound by one core (the GIL); N workers use N. Each
worker is a whole relay on its own queue file (queue.sqlite3, queue.1.sqlite3, ...):
the workers share the SMTP port (SO_REUSEPORT, the kernel spreads the connections), and
each delivers what it accepted, so no message is ever handed between processes.

- SIGTERM / SIGINT here is passed on: every worker stops gracefully, then this exits.
- A worker that exits on its own stops the others (exit status 1): a relay running at
  part strength is worse than a restart by the service manager.
- Each worker's stdin is a pipe from here that nothing is written to: if this process
  is killed (SIGKILL, OOM), the workers read EOF and exit at once; their leases are
  voided by the next run (at least once, never zero times).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

logger = logging.getLogger(__name__)


def run_workers(argv: Sequence[str], workers: int) -> int:
    """Run `argv + ["--worker", i]` for i in range(workers) until they end; returns
    this command's exit status."""
    procs: list[subprocess.Popen[bytes]] = []
    stopping = 0  # the signal passed on, once stopping

    def stop_all(signum: int, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = stopping or signum
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for i in range(workers):
        procs.append(subprocess.Popen([*argv, "--worker", str(i)], stdin=subprocess.PIPE))
    logger.info("mxpress supervisor: %d workers (pids %s)", workers, [p.pid for p in procs])
    failed = False
    while any(proc.poll() is None for proc in procs):
        if not stopping:
            for i, proc in enumerate(procs):
                code = proc.poll()
                if code is not None:  # ended on its own: stop the others
                    logger.error("worker %d exited with status %d: stopping the others", i, code)
                    failed = True
                    stop_all(signal.SIGTERM)
                    break
        time.sleep(0.1)
    # A worker still starting up when the signal came has no handler yet and dies of it:
    # it had accepted nothing, so that is a clean stop too.
    bad = [p for p in procs if p.returncode not in (0, -stopping)]
    for proc in bad:
        logger.warning("worker pid %d ended with status %d", proc.pid, proc.returncode)
    return 1 if failed or bad else 0
