"""The supervisor of `server.workers` > 1 (supervisor.py), with stand-in worker commands:
restarts of a worker that died, giving up on one that keeps dying, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from mxpress.server.balance import UNAVAILABLE, Handoff
from mxpress.supervisor import RestartPolicy, listening_socket, run_workers


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


def test_a_dead_worker_is_marked_so_that_nothing_is_passed_to_it(tmp_path: Path) -> None:
    """Each stand-in worker says on the hand-off board that it holds 0 connections
    (through the descriptors it inherited); worker 1 then dies, and stays dead (restart
    in 30 s). The supervisor marks it, so that worker 0 passes it nothing."""
    log = tmp_path / "log"
    handoff = Handoff(2)
    ready = (
        "import sys\n"
        "from mxpress.server.balance import Board, HandoffFds\n"
        f"Board(HandoffFds.from_arg({handoff.fds.to_arg()!r}).board, 2)"
        ".set_held(int(sys.argv[-1]), 0)\n"
    )
    code = ready + worker_code(log, "sys.exit(3)")
    policy = RestartPolicy(delay=30, max_failures=3, failure_window=60)
    stopper = threading.Thread(target=stop_when_started, args=(log, 1))
    stopper.start()
    try:
        assert run_workers(worker_argv(code), 2, policy, handoff=handoff) == 0
        stopper.join()
        assert handoff.board.held(0) == 0  # alive: as it said
        assert handoff.board.held(1) == UNAVAILABLE
    finally:
        handoff.close()


def test_workers_accept_on_the_shared_socket_and_a_stop_closes_it() -> None:
    listener = listening_socket("127.0.0.1", 0)
    port, fd = listener.getsockname()[1], listener.fileno()
    # A stand-in worker answers each connection with its index, on the inherited socket.
    code = (
        "import socket, sys\n"
        f"s = socket.socket(fileno={fd})\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(sys.argv[-1].encode()); c.close()\n"
    )
    answers: list[bytes] = []

    def ask_then_stop() -> None:
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                answers.append(conn.recv(16))
        os.kill(os.getpid(), signal.SIGTERM)

    asker = threading.Thread(target=ask_then_stop)
    asker.start()
    status = run_workers(worker_argv(code), 2, listeners=[listener])
    asker.join()
    assert status == 0
    assert len(answers) == 6 and set(answers) <= {b"0", b"1"}, answers
    assert listener.fileno() == -1  # the supervisor's copy is closed...
    with pytest.raises(ConnectionRefusedError):  # ... and the workers' went with them
        socket.create_connection(("127.0.0.1", port), timeout=10)
