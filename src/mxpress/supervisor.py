"""`mxpress serve` with `server.workers` > 1: one relay process per worker, and this
process watching them (like Postfix's master, much smaller).

Why processes: one relay process is bound by one core (the GIL); N workers use N. Each
worker is a whole relay on its own queue file (queue.sqlite3, queue.1.sqlite3, ...),
and each delivers what it accepted, so no message is ever handed between processes.

The workers share one listening socket, made here and inherited (`listeners`): the
worker that is free first takes the next connection, and one that holds more than its
share passes new ones on before greeting them (`handoff`, server/balance.py). A worker
that dies leaves the connections waiting to be accepted to the others (with
SO_REUSEPORT the kernel would reset those in its own queue). This process closes its
copy of the socket when it stops, so that new connections are refused, not left waiting.

- SIGTERM / SIGINT here is passed on: every worker stops gracefully, then this exits.
- A worker that exits on its own (crash, OOM kill) is started again after a short pause,
  while the others go on serving; the new one voids the dead one's leases and delivers
  its queue file (at least once, never zero times). A worker that keeps dying
  (`max_failures` times within `failure_window` seconds: a port taken, a disk gone) stops
  the relay with exit status 1: that needs the operator, not another restart.
- Each worker's stdin is a pipe from here that nothing is written to: if this process
  is killed (SIGKILL, OOM), the workers read EOF and exit at once; their leases are
  voided by the next run (at least once, never zero times).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from mxpress.server.balance import Handoff

logger = logging.getLogger(__name__)


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


def listening_socket(host: str, port: int, workers: int = 1) -> socket.socket:
    """The SMTP port, bound once here for every worker to accept on. Its queue of
    connections not yet accepted holds 100 per worker (asyncio's default for one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=100 * workers)


def run_workers(
    argv: Sequence[str],
    workers: int,
    policy: RestartPolicy | None = None,
    *,
    listeners: Sequence[socket.socket] = (),
    handoff: Handoff | None = None,
) -> int:
    """Run `argv + ["--worker", i]` for i in range(workers) until they end; returns
    this command's exit status. Every worker inherits `listeners` and `handoff`'s
    descriptors (same numbers); the listeners are closed here once stopping."""
    policy = policy if policy is not None else RestartPolicy()
    fds = tuple(sock.fileno() for sock in listeners)
    if handoff is not None:
        fds += handoff.fds.fds()
    slots = [_Worker(i) for i in range(workers)]
    stopping = 0  # the signal passed on, once stopping
    failed = False

    def stop_all(signum: int, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = stopping or signum
        for sock in listeners:
            sock.close()
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signum)

    def start(slot: _Worker) -> None:
        slot.proc = subprocess.Popen(
            [*argv, "--worker", str(slot.index)], stdin=subprocess.PIPE, pass_fds=fds
        )

    def died(slot: _Worker) -> None:
        if handoff is not None:  # nothing more is passed to it until it is back
            handoff.mark_dead(slot.index)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in slots:
            start(slot)
        logger.info(
            "mxpress supervisor: %d workers (pids %s)",
            workers,
            [slot.proc.pid for slot in slots if slot.proc is not None],
        )
        while True:
            if stopping:  # wait for the workers; a restart still pending is dropped
                if all(slot.proc is None or slot.proc.poll() is not None for slot in slots):
                    break
            elif _watch(slots, policy, start, died):
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


def _watch(
    slots: list[_Worker],
    policy: RestartPolicy,
    start: Callable[[_Worker], None],
    died: Callable[[_Worker], None],
) -> bool:
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
        died(slot)
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
