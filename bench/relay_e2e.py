"""End-to-end durable relay throughput: smtp-source → relay → smtp-sink, one run.

    .venv/bin/python bench/relay_e2e.py [--messages 20000] [--sessions 20] [--size 1024]
        [--reuse] [--repeat 1] [--workers 1] [--no-cpu-affinity] [--mxpress-only]

--reuse: smtp-source sends every message of a session over one connection (`-d`), as a
pooled client does; without it, one connection per message (smtp-source's default).
--repeat: alternate Postfix and mxpress that many times; each pair gives a ratio, and
the table ends with the median (this 2-core machine varies by ~10% run to run).
--workers: mxpress's relay processes (server.workers); Postfix always runs as many
processes as it likes (here up to 100 smtpd and 20 smtp).
--no-cpu-affinity: leave mxpress's workers unpinned (server.cpu_affinity = false); by
default each worker runs on a CPU of its own.

Both relays fsync a message before their 250 (mxpress: SQLite WAL commit, group-committed;
Postfix: its queue file) and relay everything to the same Postfix smtp-sink:
- mxpress: `mxpress serve` (SMTP submission, SQLite queue, delivery to the sink);
- Postfix: a private instance (tests/lab/servers.py) with relayhost = the sink.
Postfix's smtp-source is the load generator for both. Reports submission msgs/s (until
smtp-source got every 250), end-to-end msgs/s (until the sink counted every message), and
the time from 250 to delivery (p50, p99): mxpress from its queue (created → delivered),
Postfix from its log (delay=), and the machine's busy CPU per message over the same span
(every process: smtp-source, the relay, smtp-sink; on 2 cores, 2 s of CPU a second is
the ceiling). Not a timed test: numbers only.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab.servers import SmtpSink, free_port, postfix_smtpd, require_binary, smtp_sink

from mxpress import relay as relay_module
from mxpress.compiled import is_compiled
from mxpress.protocol import server as protocol_server


@dataclass(frozen=True)
class Load:
    messages: int
    sessions: int
    size: int
    reuse: bool
    workers: int = 1  # mxpress's server.workers (Postfix runs its processes as it likes)
    cpu_affinity: bool = True  # mxpress's server.cpu_affinity


@dataclass(frozen=True)
class Row:
    relay: str
    messages: int
    submitted: float  # msgs/s until smtp-source had every 250
    end_to_end: float  # msgs/s until the sink counted every message
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the whole machine's busy CPU per message (generator, relay, sink)

    def markdown(self) -> str:
        return (
            f"| {self.relay} | {self.messages} | {self.submitted:,.0f} | {self.end_to_end:,.0f}"
            f" | {self.p50_ms:.0f} | {self.p99_ms:.0f} | {self.cpu_us:,.0f} |"
        )


def busy_seconds() -> float:
    """CPU time the machine spent busy so far, all cores (/proc/stat: user, nice, system,
    irq, softirq; not idle, iowait or steal)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_source(port: int, load: Load) -> float:
    source = require_binary("smtp-source")
    start = time.perf_counter()
    subprocess.run(
        [
            source,
            *(["-d"] if load.reuse else []),
            "-s",
            str(load.sessions),
            "-m",
            str(load.messages),
            "-l",
            str(load.size),
            "-f",
            "load@source.test",
            "-t",
            "sink@example.test",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def wait_for(sink: SmtpSink, target: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while sink.message_count() < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"sink got {sink.message_count()} of {target} messages")
        time.sleep(0.01)


def measure(sink: SmtpSink, port: int, load: Load) -> tuple[float, float, float]:
    """Run the load against the relay on `port`: seconds until smtp-source had every 250,
    seconds until the sink counted every message, and the machine's busy CPU seconds."""
    base = sink.message_count()
    start, busy = time.perf_counter(), busy_seconds()
    submit = run_source(port, load)
    wait_for(sink, base + load.messages)
    return submit, time.perf_counter() - start, busy_seconds() - busy


def percentiles(values: list[float]) -> tuple[float, float]:
    values.sort()
    if not values:
        return float("nan"), float("nan")
    return values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]


def bench_mxpress(tmp: Path, sink: SmtpSink, load: Load) -> Row:
    n, size = load.messages, load.size
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "mxpress.toml"
    config.write_text(
        f"""
[server]
hostname = "relay.test"
data_dir = "{tmp / "var"}"
workers = {load.workers}
cpu_affinity = {str(load.cpu_affinity).lower()}
[submission]
listen = "127.0.0.1:{port}"
trusted_networks = ["127.0.0.0/8"]
max_message_size = {max(size * 4, 1 << 20)}
[http]
enabled = false
[delivery]
relay = "smtp+plain://{sink.host}:{sink.port}"
max_per_destination = 20
poll_interval = 0.05
"""
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mxpress.cli",
            "serve",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                # The greeting, not only the connect: the workers' shared socket takes
                # connections before they accept them.
                with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                    if probe.recv(512).startswith(b"220"):
                        break
            except OSError:
                pass
            time.sleep(0.05)
        submit, total, cpu = measure(sink, port, load)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    delays = []
    for shard in sorted((tmp / "var").glob("queue*.sqlite3")):  # one per worker
        with sqlite3.connect(shard) as db:
            delays += [
                r[0]
                for r in db.execute(
                    "SELECT r.updated_at - m.created_at FROM recipients r JOIN messages m"
                    " ON m.id = r.message_id WHERE r.state = 'delivered'"
                )
            ]
    p50, p99 = percentiles(delays)
    name = "mxpress serve" + (f" ({load.workers} workers)" if load.workers > 1 else "")
    return Row(name, n, n / submit, n / total, p50 * 1e3, p99 * 1e3, cpu / n * 1e6)


def bench_postfix(tmp: Path, sink: SmtpSink, load: Load) -> Row:
    n, size = load.messages, load.size
    port = free_port()
    relay = {
        "default_transport": "smtp",
        "relay_transport": "smtp",
        "relayhost": f"[{sink.host}]:{sink.port}",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        "message_size_limit": str(max(size * 4, 1 << 20)),
        "default_destination_concurrency_limit": "20",
        "smtp_destination_concurrency_limit": "20",
        "default_process_limit": "100",
    }
    with postfix_smtpd("127.0.0.1", port, tls=False, workdir=tmp, extra_config=relay) as pf:
        submit, total, cpu = measure(sink, port, load)
        delays = [float(d) for d in re.findall(r"status=sent.*?\bdelay=([0-9.]+)", pf.log())]
        if not delays:
            delays = [float(d) for d in re.findall(r"\bdelay=([0-9.]+),.*status=sent", pf.log())]
    p50, p99 = percentiles(delays)
    return Row("Postfix relay", n, n / submit, n / total, p50 * 1e3, p99 * 1e3, cpu / n * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--reuse", action="store_true", help="smtp-source -d")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="mxpress server.workers")
    parser.add_argument(
        "--cpu-affinity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mxpress server.cpu_affinity (each worker on a CPU of its own)",
    )
    parser.add_argument(
        "--mxpress-only",
        action="store_true",
        help="skip Postfix (no ratio): for comparing two versions of mxpress by its rows",
    )
    args = parser.parse_args()
    load = Load(
        args.messages, args.sessions, args.size, args.reuse, args.workers, args.cpu_affinity
    )
    rows: list[Row] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mxpress-e2e-") as tmp, smtp_sink() as sink:
        for run in range(args.repeat):
            if not args.mxpress_only:
                postfix = bench_postfix(Path(tmp) / f"pf{run}", sink, load)
                print(postfix.markdown(), file=sys.stderr)
                rows.append(postfix)
            mxpress = bench_mxpress(Path(tmp) / f"mx{run}", sink, load)
            print(mxpress.markdown(), file=sys.stderr)
            rows.append(mxpress)
            if not args.mxpress_only:
                ratios.append(mxpress.end_to_end / postfix.end_to_end)
    connections = "one connection per session (-d)" if load.reuse else "one per message"
    print(
        f"\nsmtp-source ({load.sessions} sessions, {load.size} B, {connections}) → relay → "
        "smtp-sink, fsync before 250 on both"
    )
    # The interpreter matters: a PGO/LTO build runs the relay with ~10% less CPU here.
    python = f"Python {platform.python_version()} ({os.path.realpath(sys.executable)})"
    # So does the build: the hot path compiled by mypyc (make native) or pure Python.
    built = [is_compiled(module) for module in (protocol_server, relay_module)]
    core = "compiled" if all(built) else "partly compiled" if any(built) else "pure Python"
    pinned = "each on a CPU of its own" if load.cpu_affinity else "unpinned"
    print(f"mxpress: {load.workers} worker(s) {pinned}, {python}, hot path {core}")
    print(
        "| relay | messages | submitted msgs/s | end-to-end msgs/s | 250→delivered p50 ms "
        "| p99 ms | machine CPU µs/msg |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(row.markdown())
    if ratios:
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        print(f"\nend-to-end mxpress / Postfix: {each}; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
