"""The supervisor of `server.workers` > 1 (supervisor.py), with stand-in worker commands:
restarts of a worker that died, giving up on one that keeps dying, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mxpress.supervisor import RestartPolicy, migrate_hint, run_workers


def worker_argv(code: str) -> list[str]:
    # The supervisor appends ["--worker", i]: sys.argv[-1] is the worker's index.
    return [sys.executable, "-c", code]


def test_a_worker_that_keeps_dying_stops_the_relay(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    code = f"import sys; open({str(starts)!r}, 'a').write(sys.argv[-1]); sys.exit(3)"
    policy = RestartPolicy(delay=0.05, max_failures=3, failure_window=60)
    began = time.monotonic()
    assert run_workers(worker_argv(code), 2, policy) == 1
    assert time.monotonic() - began < 10
    # Each worker was started again after its deaths, until one had died 3 times.
    assert 5 <= len(starts.read_text()) <= 6, starts.read_text()
    assert set(starts.read_text()) == {"0", "1"}


def worker_code(log: Path, worker_1: str) -> str:
    """A stand-in worker: notes its pid in `log` + its index, then runs `worker_1` if it
    is worker 1; every worker then sleeps until it is stopped."""
    return (
        "import os, sys, time\n"
        f"log = {str(log)!r} + sys.argv[-1]\n"
        "first = not os.path.exists(log)\n"
        "open(log, 'a').write(str(os.getpid()) + ' ')\n"
        f"if sys.argv[-1] == '1': {worker_1}\n"
        "time.sleep(30)\n"
    )


def test_a_dead_worker_is_started_again_while_the_others_serve(tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = worker_code(log, "first and sys.exit(3)")  # dies at its first start only
    policy = RestartPolicy(delay=0.1, max_failures=3, failure_window=60)
    stopper = threading.Thread(target=stop_when_started, args=(log, 2))
    stopper.start()
    began = time.monotonic()
    status = run_workers(worker_argv(code), 2, policy)
    stopper.join()
    assert status == 0  # a stop by SIGTERM, after a worker was replaced, is clean
    assert time.monotonic() - began < 10
    assert len(Path(f"{log}0").read_text().split()) == 1  # worker 0 ran throughout
    assert len(Path(f"{log}1").read_text().split()) == 2  # worker 1 started twice


def test_a_stop_drops_a_pending_restart(tmp_path: Path) -> None:
    log = tmp_path / "log"
    code = worker_code(log, "sys.exit(3)")
    policy = RestartPolicy(delay=30, max_failures=3, failure_window=60)
    stopper = threading.Thread(target=stop_when_started, args=(log, 1))
    stopper.start()
    began = time.monotonic()
    assert run_workers(worker_argv(code), 2, policy) == 0
    stopper.join()
    assert time.monotonic() - began < 10  # did not wait 30 s for the restart
    assert len(Path(f"{log}1").read_text().split()) == 1  # nor start worker 1 again


def stop_when_started(log: Path, worker_1_starts: int) -> None:
    """SIGTERM this process (the supervisor) once worker 0 runs and worker 1 has been
    started `worker_1_starts` times, and a little later (for the last one to settle)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            starts = len(Path(f"{log}1").read_text().split())
            if Path(f"{log}0").exists() and starts >= worker_1_starts:
                break
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGTERM)


def test_the_hint_about_connections_waiting_at_a_dying_worker(tmp_path: Path) -> None:
    setting = tmp_path / "tcp_migrate_req"
    setting.write_text("0\n")
    hint = migrate_hint(setting)
    assert hint is not None and "sysctl -w net.ipv4.tcp_migrate_req=1" in hint
    setting.write_text("1\n")
    assert migrate_hint(setting) is None
    assert migrate_hint(tmp_path / "absent") is None  # not Linux, or older than 5.14
