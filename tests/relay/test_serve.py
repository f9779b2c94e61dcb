"""`mxpress serve` as a real process: SMTP submission in, delivery out, SIGTERM, SIGKILL."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, aiosmtpd_server, free_port


class ServeProcess:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_output = ""

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mxpress.cli",
                "serve",
                "--config",
                str(self.config),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as s:
                    s.noop()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mxpress serve did not start: {self.output()}")

    def output(self) -> str:
        if self.proc is None or self.proc.stdout is None:
            return ""
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read().decode(errors="replace")

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        if self.proc.stdout is not None:
            self.last_output = self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()
        return code


@pytest.fixture
def sink() -> Iterator[tuple[AiosmtpdServer, RecordingHandler]]:
    handler = RecordingHandler()
    with start_lab_server(lambda: aiosmtpd_server(handler)) as server:
        yield server, handler


API_KEY = "test-key"


def write_config(
    tmp_path: Path,
    sink: AiosmtpdServer,
    port: int,
    *,
    workers: int = 1,
    http_port: int = 0,
    cpu_affinity: bool = False,
) -> Path:
    config = tmp_path / "mxpress.toml"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    http = (
        f'listen = "127.0.0.1:{http_port}"\napi_keys = {{ test = "{digest}" }}'
        if http_port
        else "enabled = false"
    )
    config.write_text(
        f"""
[server]
hostname = "relay.test"
data_dir = "{tmp_path / "var"}"
workers = {workers}
cpu_affinity = {str(cpu_affinity).lower()}

[observe]
worker_metrics_interval = 0.2

[submission]
listen = "127.0.0.1:{port}"
trusted_networks = ["127.0.0.0/8"]

[http]
{http}

[delivery]
relay = "smtp+plain://{sink.host}:{sink.port}"
poll_interval = 0.05

[retry]
first_retry = 0.2
max_backoff = 1.0
"""
    )
    return config


def message(n: int) -> bytes:
    return (
        f"From: app@x.test\r\nTo: user@example.test\r\nSubject: n{n}\r\nX-Seq: {n}\r\n"
        f"\r\nmessage {n}\r\n"
    ).encode()


def test_submit_deliver_and_graceful_stop(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, handler = sink
    port = free_port()
    serve = ServeProcess(write_config(tmp_path, server, port), port)
    serve.start()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        reply = client.sendmail("app@x.test", ["user@example.test"], message(1))
        assert reply == {}
    [received] = handler.wait_for_messages(1, timeout=20)
    assert b"X-Seq: 1" in received.content
    assert received.content.startswith(b"Received: from ")  # our trace header
    assert serve.signal(signal.SIGTERM) == 0  # graceful


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_loses_nothing_that_got_250(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler], workers: int
) -> None:
    """Submit while the relay is killed with SIGKILL at random moments and restarted:
    every message that got its 250 is delivered; duplicates stay within what was in
    flight at the kills. With workers, the kill hits the supervisor: the workers must
    follow it at once, and the next run's workers take over their queue files."""
    server, handler = sink
    port = free_port()
    serve = ServeProcess(write_config(tmp_path, server, port, workers=workers), port)
    serve.start()
    # The full proof is 10,000 messages: MXPRESS_CRASH_MESSAGES=10000
    # MXPRESS_CRASH_KILLS=5; the default keeps the suite fast.
    total = int(os.environ.get("MXPRESS_CRASH_MESSAGES", "600"))
    kills = int(os.environ.get("MXPRESS_CRASH_KILLS", "3"))
    senders = 4
    accepted: set[int] = set()
    lock = threading.Lock()
    counter = iter(range(total))
    stop = threading.Event()

    def sender() -> None:
        while not stop.is_set():
            with lock:
                n = next(counter, None)
            if n is None:
                return
            while not stop.is_set():  # retry this message until the relay takes it
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                        client.sendmail("app@x.test", ["user@example.test"], message(n))
                    with lock:
                        accepted.add(n)
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.05)  # killed mid-way: not accepted, try again

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    rng = random.Random(7)
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 1.0))
        assert serve.proc is not None
        orphans = children_of(serve.proc.pid)
        assert len(orphans) == (workers if workers > 1 else 0)
        serve.signal(signal.SIGKILL)
        wait_gone(orphans)
        serve.start()
    for t in threads:
        t.join(600)
    stop.set()
    assert len(accepted) == total
    deadline = time.monotonic() + 120
    seen: dict[int, int] = {}
    while time.monotonic() < deadline:
        seen = {}
        for m in list(handler.messages):
            for line in m.content.split(b"\r\n"):
                if line.startswith(b"X-Seq: "):
                    n = int(line[7:])
                    seen[n] = seen.get(n, 0) + 1
        if accepted <= set(seen):
            break
        time.sleep(0.2)
    missing = accepted - set(seen)
    assert not missing, f"{len(missing)} accepted messages never delivered: {sorted(missing)[:10]}"
    duplicates = sum(c - 1 for c in seen.values())
    # At most what a relay can have in flight per kill (default concurrency 500), and in
    # practice far fewer; a message delivered twice is allowed, zero times is not.
    assert duplicates <= kills * 500
    assert serve.signal(signal.SIGTERM) == 0, serve.last_output
    print(f"accepted {len(accepted)}, delivered {len(seen)}, duplicates {duplicates}")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} outlived their supervisor"
        time.sleep(0.02)


def submit(port: int, n: int) -> str:
    """One message on a connection of its own; returns the queue id from the 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.mail("app@x.test")[0] == 250
        assert client.rcpt("user@example.test")[0] == 250
        code, text = client.data(message(n))
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[-1]


def test_workers_share_the_port_each_with_its_queue_file(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, handler = sink
    port, http_port = free_port(), free_port()
    config = write_config(tmp_path, server, port, workers=2, http_port=http_port)
    serve = ServeProcess(config, port)
    serve.start()
    try:
        check_workers(serve, port, http_port, tmp_path / "var", handler)
    finally:
        if serve.proc is not None and serve.proc.poll() is None:
            serve.proc.kill()


def test_pinned_workers_each_on_a_cpu_of_its_own(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, handler = sink
    port, http_port = free_port(), free_port()
    config = write_config(tmp_path, server, port, workers=2, http_port=http_port, cpu_affinity=True)
    allowed = os.sched_getaffinity(0)
    serve = ServeProcess(config, port)
    serve.start()
    try:
        check_pinned(serve, allowed)
        check_workers(serve, port, http_port, tmp_path / "var", handler)
    finally:
        if serve.proc is not None and serve.proc.poll() is None:
            serve.proc.kill()


def test_a_burst_of_connections_is_shared_by_the_workers(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    """20 connections opened at once, like a client's pool: uvloop accepts all that wait
    in one go, so without the hand-off (server/balance.py) the worker that woke first
    kept all 20. Each then sends one message while all are open: the queue file it
    lands in tells which worker holds the connection."""
    server, handler = sink
    port, http_port = free_port(), free_port()
    serve = ServeProcess(write_config(tmp_path, server, port, workers=2, http_port=http_port), port)
    serve.start()
    assert serve.proc is not None
    try:
        for pid in children_of(serve.proc.pid):
            wait_accepting(pid)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        files = [client.makefile("rb") for client in clients]
        for file in files:
            assert file.readline().startswith(b"220 relay.test ")
        for n, (client, file) in enumerate(zip(clients, files, strict=True)):
            for line in (
                b"EHLO client.test",
                b"MAIL FROM:<app@x.test>",
                b"RCPT TO:<user@example.test>",
                b"DATA",
            ):
                client.sendall(line + b"\r\n")
                while (reply := file.readline())[3:4] == b"-":
                    pass
                assert reply[:1] in (b"2", b"3"), reply
            client.sendall(message(n) + b".\r\n")
            assert file.readline().startswith(b"250 "), n
        counts = [len(stored_ids(tmp_path / "var" / name)) for name in QUEUE_FILES]
        assert sum(counts) == 20 and min(counts) >= 8, counts
        for client, file in zip(clients, files, strict=True):
            client.sendall(b"QUIT\r\n")
            assert file.readline().startswith(b"221 ")
            file.close()
            client.close()
        handler.wait_for_messages(20, timeout=30)
        # Both workers' counts in /metrics (worker 0): what one passed, the other took.
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
            passed, taken = (
                sum(
                    s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == f"mxpress_smtp_connections_{name}_total"
                )
                for name in ("passed_on", "taken_in")
            )
            if passed == taken >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert passed == taken >= 1, (passed, taken)
        assert serve.signal(signal.SIGTERM) == 0
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()


def check_pinned(serve: ServeProcess, allowed: set[int]) -> None:
    """Every thread of worker i runs on the i-th allowed CPU only; the supervisor is free.
    A worker pins itself early in its start: until then it shows every allowed CPU."""
    assert serve.proc is not None
    order = sorted(allowed)
    expected = {i: {order[i % len(order)]} for i in (0, 1)}
    cpus: dict[int, set[int]] = {}
    deadline = time.monotonic() + 10
    while cpus != expected:
        assert time.monotonic() < deadline, cpus
        time.sleep(0.05)
        cpus = {}
        for pid in children_of(serve.proc.pid):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--worker" not in argv:  # forked, not yet the worker's program
                continue
            index = int(argv[argv.index(b"--worker") + 1])
            cpus[index] = set()
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                    cpus[index] |= os.sched_getaffinity(int(task.name))
    assert os.sched_getaffinity(serve.proc.pid) == allowed


QUEUE_FILES = ("queue.sqlite3", "queue.1.sqlite3")  # worker 0's, worker 1's


def stored_ids(path: Path) -> set[str]:
    """The ids of the messages in one worker's queue file; none before it exists."""
    if not path.exists():
        return set()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return {row[0] for row in db.execute("SELECT id FROM messages")}
        except sqlite3.OperationalError:  # created, its tables not yet
            return set()


def check_workers(
    serve: ServeProcess, port: int, http_port: int, data: Path, handler: RecordingHandler
) -> None:
    # serve.start() saw one worker answer; the other may still be starting, and until it
    # polls the shared SMTP socket the first accepts every connection. So: batches of 20
    # until both queue files hold messages.
    ids: list[str] = []
    stored: dict[str, set[str]] = {}
    while len(ids) < 200 and not all(stored.get(name) for name in QUEUE_FILES):
        ids += [submit(port, len(ids) + n) for n in range(20)]
        stored = {name: stored_ids(data / name) for name in QUEUE_FILES}
    handler.wait_for_messages(len(ids), timeout=30)
    assert stored["queue.sqlite3"] and stored["queue.1.sqlite3"], {
        k: len(v) for k, v in stored.items()
    }
    assert stored["queue.sqlite3"] | stored["queue.1.sqlite3"] == set(ids)
    # The HTTP API (worker 0) sees every worker's messages.
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for message_id in (min(stored["queue.sqlite3"]), min(stored["queue.1.sqlite3"])):
        # The outcome is written after the sink has the message: wait for it.
        deadline = time.monotonic() + 10
        while True:
            url = f"http://127.0.0.1:{http_port}/v1/messages/{message_id}"
            r = httpx.get(url, headers=headers)
            if r.status_code != 200 or r.json()["state"] == "done":
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
    # /metrics (worker 0) carries both workers' counts, one family, labelled by worker.
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
        accepted = {
            s.labels["worker"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "mxpress_messages_accepted_total" and s.labels.get("via") == "smtp"
        }
        if sum(accepted.values()) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(accepted) == {"0", "1"} and sum(accepted.values()) == len(ids), accepted
    assert text.count("# TYPE mxpress_messages_accepted_total counter") == 1
    assert serve.signal(signal.SIGTERM) == 0  # both workers stopped gracefully


def test_second_relay_on_same_data_dir_refused(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, _ = sink
    port = free_port()
    first = ServeProcess(write_config(tmp_path, server, port), port)
    first.start()
    second = subprocess.run(
        [sys.executable, "-m", "mxpress.cli", "serve", "--config", str(first.config)],
        capture_output=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert b"another mxpress relay is running" in second.stderr
    assert first.signal(signal.SIGTERM) == 0


def test_a_worker_that_dies_is_started_again(
    tmp_path: Path, sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    # Like Postfix's master: the other worker goes on serving, the dead one comes back,
    # and the relay is whole again (both queue files take mail, HTTP and metrics work).
    server, handler = sink
    port, http_port = free_port(), free_port()
    config = write_config(tmp_path, server, port, workers=2, http_port=http_port)
    serve = ServeProcess(config, port)
    serve.start()
    assert serve.proc is not None
    try:
        workers = sorted(children_of(serve.proc.pid))
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            now = sorted(children_of(serve.proc.pid))
            if len(now) == 2 and workers[1] not in now:
                break
            assert serve.proc.poll() is None, serve.output()
            assert time.monotonic() < deadline, f"no new worker: {now}"
            time.sleep(0.05)
        assert workers[0] in now  # the other worker was not touched
        (new,) = set(now) - set(workers)
        wait_accepting(new)  # the new worker accepts on the shared SMTP socket
        check_workers(serve, port, http_port, tmp_path / "var", handler)
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()


def wait_accepting(pid: int, timeout: float = 20) -> None:
    """Wait until worker `pid` polls the SMTP socket it inherited (--listen-fd N): its
    epoll set (in /proc/PID/fdinfo) then holds descriptor N."""
    deadline = time.monotonic() + timeout
    while True:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        fd = int(argv[argv.index(b"--listen-fd") + 1]) if b"--listen-fd" in argv else -1
        polled = set()  # (before its exec, the process is still the supervisor's fork)
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            try:
                text = info.read_text()
            except OSError:  # closed meanwhile
                continue
            polled |= {
                int(line.split()[1]) for line in text.splitlines() if line.startswith("tfd:")
            }
        if fd in polled:
            return
        assert time.monotonic() < deadline, f"worker {pid} does not poll fd {fd}: {polled}"
        time.sleep(0.05)
