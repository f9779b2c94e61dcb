"""`mxpress serve` with `server.workers` > 1: one relay process per worker, and this
process watching them (like Postfix's master, much smaller).

Why processes: one relay process is bound by one core (the GIL); N workers use N. Each
worker is a whole relay on its own queue file (queue.sqlite3, queue.1.sqlite3, ...):
the workers share the SMTP port (SO_REUSEPORT, the kernel spreads the connections), and
each delivers what it accepted, so no message is ever handed between processes.

- SIGTERM / SIGINT here is passed on: every worker stops gracefully, then this exits.
- A worker that exits on its own (crash, OOM kill) is started again after a short pause,
  while the others go on serving; the new one voids the dead one's leases and delivers
  its queue file (at least once, never zero times). A worker that keeps dying
  (`max_failures` times within `failure_window` seconds: a port taken, a disk gone) stops
  the relay with exit status 1: that needs the operator, not another restart.
- A worker that dies takes the connections in its accept queue with it (the kernel
  resets them) unless net.ipv4.tcp_migrate_req = 1: the start says so when it is 0.
- Each worker's stdin is a pipe from here that nothing is written to: if this process
  is killed (SIGKILL, OOM), the workers read EOF and exit at once; their leases are
  voided by the next run (at least once, never zero times).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a worker that died is started again, and when the relay gives up."""

    delay: float = 1.0  # seconds between a worker's death and its restart
    max_failures: int = 5  # deaths within `failure_window` that stop the relay
    failure_window: float = 60.0


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None  # None while a restart is pending
    restart_at: float = 0.0  # monotonic time of the pending restart
    deaths: deque[float] = field(default_factory=deque)  # monotonic times


def migrate_hint(path: Path = MIGRATE_REQ) -> str | None:
    """Advice if the kernel would reset the connections waiting in the accept queue of a
    worker that dies, when it could hand them to another worker (Linux 5.14+)."""
    try:
        value = path.read_text().strip()
    except OSError:  # not Linux, or older than 5.14: nothing to set
        return None
    if value != "0":
        return None
    return (
        "net.ipv4.tcp_migrate_req is 0: connections waiting at a worker that dies are "
        "reset; `sysctl -w net.ipv4.tcp_migrate_req=1` hands them to another worker"
    )


def run_workers(argv: Sequence[str], workers: int, policy: RestartPolicy | None = None) -> int:
    """Run `argv + ["--worker", i]` for i in range(workers) until they end; returns
    this command's exit status."""
    policy = policy if policy is not None else RestartPolicy()
    slots = [_Worker(i) for i in range(workers)]
    stopping = 0  # the signal passed on, once stopping
    failed = False

    def stop_all(signum: int, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = stopping or signum
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    def start(slot: _Worker) -> None:
        slot.proc = subprocess.Popen([*argv, "--worker", str(slot.index)], stdin=subprocess.PIPE)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in slots:
            start(slot)
        logger.info(
            "mxpress supervisor: %d workers (pids %s)",
            workers,
            [slot.proc.pid for slot in slots if slot.proc is not None],
        )
        if (hint := migrate_hint()) is not None:
            logger.info("mxpress supervisor: %s", hint)
        while True:
            if stopping:  # wait for the workers; a restart still pending is dropped
                if all(slot.proc is None or slot.proc.poll() is not None for slot in slots):
                    break
            elif _watch(slots, policy, start):
                failed = True
                stop_all(signal.SIGTERM)
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A worker still starting up when the signal came has no handler yet and dies of it:
    # it had accepted nothing, so that is a clean stop too.
    bad = [s.proc for s in slots if s.proc is not None and s.proc.returncode not in (0, -stopping)]
    for proc in bad:
        logger.warning("worker pid %d ended with status %d", proc.pid, proc.returncode)
    return 1 if failed or bad else 0


def _watch(slots: list[_Worker], policy: RestartPolicy, start: Callable[[_Worker], None]) -> bool:
    """One look at the workers: schedule restarts of the dead, start those due.
    True if one has died too often (the relay must stop)."""
    now = time.monotonic()
    for slot in slots:
        proc = slot.proc
        if proc is None:
            if now >= slot.restart_at:
                start(slot)
                logger.warning("worker %d started again", slot.index)
            continue
        if proc.poll() is None:
            continue
        slot.deaths.append(now)
        while slot.deaths and now - slot.deaths[0] > policy.failure_window:
            slot.deaths.popleft()
        if len(slot.deaths) >= policy.max_failures:
            logger.error(
                "worker %d exited with status %d, %d times within %.0f s: stopping the relay",
                slot.index,
                proc.returncode,
                len(slot.deaths),
                policy.failure_window,
            )
            return True
        logger.error(
            "worker %d exited with status %d: restarting it in %.1f s",
            slot.index,
            proc.returncode,
            policy.delay,
        )
        slot.proc, slot.restart_at = None, now + policy.delay
    return False
