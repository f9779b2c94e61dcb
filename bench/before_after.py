"""The original study's before/after: naive sends vs the mxpress Mailer, through a WAN.

    .venv/bin/python bench/before_after.py [--rtt-ms 50] [--dns-delay-ms 30]

Lab (in a child process, so the clients never share its event loop): a real Postfix smtpd
with STARTTLS and CHUNKING on 127.0.0.2, reached through bench/wanproxy.py on 127.0.0.3
(each direction delayed by RTT/2, connect by one RTT), and a DNS server
(mxpress.dns.testing) answering every query after 30 ms: bench.test MX -> mx.bench.test
A 127.0.0.3.

- naive: for each message, fresh MX and A lookups (dnspython, no cache), a new
  connection, STARTTLS (full handshake, certificate verified), EHLO, one command per round
  trip (smtplib), QUIT: what smtplib / Go net/smtp users do. Threads give the concurrency.
- mxpress: one Mailer (cached DNS, pooled sessions, TLS resumption, pipelining/CHUNKING),
  asyncio workers give the concurrency.
At 1, 10 and 100 concurrent senders: throughput, p50/p99 latency, errors, TCP connects and
TLS handshakes (full/resumed). Then a full vs a resumed STARTTLS handshake, TLS 1.3 and 1.2.
Not a timed test: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import smtplib
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dns.resolver
import uvloop
from tests.lab.servers import free_port, make_test_ca, postfix_smtpd

import mxpress
from mxpress.transport.connection import Connection

DOMAIN = "bench.test"
MX = "mx.bench.test"
PROXY_HOST = "127.0.0.3"
SENDER = "bench@sender.test"
DATA = (
    b"From: bench@sender.test\r\nTo: user@bench.test\r\nSubject: before/after\r\n\r\n"
    + (b"x" * 78 + b"\r\n") * 12
)


# --- the lab process -------------------------------------------------------------------


def lab_main(port: int, smtpd_port: int, rtt: float, dns_delay: float, conn: Any) -> None:
    from mxpress.dns.testing import FakeDNSServer
    from wanproxy import WanProxy

    async def run() -> None:
        async with (
            FakeDNSServer() as server,
            WanProxy(listen=(PROXY_HOST, port), target=("127.0.0.2", smtpd_port), rtt=rtt) as proxy,
        ):
            server.add(DOMAIN, "MX", f"10 {MX}")
            server.add(MX, "A", PROXY_HOST)
            server.fault(delay=dns_delay)
            conn.send(server.address)
            loop = asyncio.get_running_loop()
            while True:  # answer "stats" requests until told to stop
                msg = await loop.run_in_executor(None, conn.recv)
                if msg == "stop":
                    return
                conn.send({"connects": proxy.connections, "dns_queries": server.count()})

    uvloop.run(run())


class Lab:
    def __init__(self, port: int, smtpd_port: int, rtt: float, dns_delay: float) -> None:
        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("fork").Process(
            target=lab_main, args=(port, smtpd_port, rtt, dns_delay, child), daemon=True
        )
        self._proc.start()
        self.dns_address: str = self._conn.recv()
        self.dns_host, dns_port = self.dns_address.rsplit(":", 1)
        self.dns_port = int(dns_port)

    def stats(self) -> dict[str, int]:
        self._conn.send("stats")
        result: dict[str, int] = self._conn.recv()
        return result

    def stop(self) -> None:
        self._conn.send("stop")
        self._proc.join(10)


# --- TLS handshake accounting for mxpress (a bench-only wrapper) ---------------------


class TLSCount:
    def __init__(self) -> None:
        self.full = 0
        self.resumed = 0
        original = Connection.start_tls
        counter = self

        async def counted(self: Connection, *args: Any, **kw: Any) -> Any:
            codec = await original(self, *args, **kw)
            if codec.session_reused:
                counter.resumed += 1
            else:
                counter.full += 1
            return codec

        Connection.start_tls = counted  # type: ignore[method-assign]

    def take(self) -> tuple[int, int]:
        out = (self.full, self.resumed)
        self.full = self.resumed = 0
        return out


# --- clients ------------------------------------------------------------------------


def naive_one(lab: Lab, port: int, ctx: ssl.SSLContext) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [lab.dns_host]
    resolver.port = lab.dns_port
    mx = str(resolver.resolve(DOMAIN, "MX")[0].exchange).rstrip(".")
    address = str(resolver.resolve(mx, "A")[0])
    with smtplib.SMTP(address, port, timeout=30) as client:
        client.starttls(context=ctx)
        client.sendmail(SENDER, ["user@bench.test"], DATA)


def run_naive(
    lab: Lab, port: int, ctx: ssl.SSLContext, concurrency: int, count: int
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    remaining = [count]

    def worker() -> None:
        nonlocal errors
        while True:
            with lock:
                if not remaining[0]:
                    return
                remaining[0] -= 1
            t = time.perf_counter()
            try:
                naive_one(lab, port, ctx)
            except Exception:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, errors


async def run_mailer(
    mailer: mxpress.Mailer, concurrency: int, count: int
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    remaining = count

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining:
            remaining -= 1
            t = time.perf_counter()
            result = await mailer.send(DATA)
            if result.ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, errors


def row(
    name: str,
    conc: int,
    elapsed: float,
    lat: list[float],
    errors: int,
    rtt: float,
    connects: int,
    tls: str,
) -> str:
    n = len(lat)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = sorted(lat)[min(n - 1, int(n * 0.99))] if lat else float("nan")
    return (
        f"| {name} | {conc} | {n} | {n / elapsed:,.1f} | {p50 * 1e3:.0f} ({p50 / rtt:.1f} RTT) "
        f"| {p99 * 1e3:.0f} | {errors} | {connects} | {tls} |"
    )


async def handshake_cost(port: int, cafile: str, rtt: float, version: ssl.TLSVersion) -> str:
    store = mxpress.TLSSessionStore()
    ctx = store.context(verify=True, cafile=cafile)
    ctx.maximum_version = version  # the store hands this same context to every session
    costs = []
    for _ in range(2):
        session = await mxpress.connect(
            PROXY_HOST,
            port,
            tls="required",
            cafile=cafile,
            server_hostname=MX,
            tls_sessions=store,
            timeout=30,
        )
        costs.append((session.timings["tls"], session.tls_resumed, session.tls_info))
        await session.quit()
    (full, r0, info), (resumed, r1, _) = costs
    assert not r0 and r1, "expected a full handshake, then a resumed one"
    name = info.version if info else "?"
    return (
        f"| {name} | {full * 1e3:.1f} ({full / rtt:.2f} RTT) | {resumed * 1e3:.1f} "
        f"({resumed / rtt:.2f} RTT) | {(full - resumed) / rtt:.2f} RTT |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--dns-delay-ms", type=float, default=30.0)
    parser.add_argument("--levels", default="1,10,100")
    args = parser.parse_args()
    rtt, dns_delay = args.rtt_ms / 1000, args.dns_delay_ms / 1000
    levels = [int(x) for x in args.levels.split(",")]
    # Messages per level: enough for stable p50/p99 without running for minutes.
    naive_counts = {1: 15, 10: 100, 100: 400}
    mx_counts = {1: 60, 10: 600, 100: 4000}

    with tempfile.TemporaryDirectory(prefix="mxpress-ba-") as tmp:
        ca = make_test_ca(Path(tmp) / "ca", extra_names=[MX, PROXY_HOST])
        port = free_port(PROXY_HOST)
        with postfix_smtpd(
            "127.0.0.2",
            port,
            tls_cert=ca.cert_pem,
            tls_key=ca.key_pem,
            workdir=Path(tmp),
            hostname=MX,
            max_connections=400,
        ) as smtpd:
            lab = Lab(port, smtpd.port, rtt, dns_delay)
            try:
                ctx = ssl.create_default_context(cafile=str(ca.ca_pem))
                tls_count = TLSCount()
                rows = []
                for conc in levels:
                    before = lab.stats()["connects"]
                    elapsed, lat, err = run_naive(lab, port, ctx, conc, naive_counts.get(conc, 100))
                    connects = lab.stats()["connects"] - before
                    rows.append(
                        row(
                            "naive (smtplib, fresh DNS)",
                            conc,
                            elapsed,
                            lat,
                            err,
                            rtt,
                            connects,
                            f"{connects} full / 0 resumed",
                        )
                    )
                    print(rows[-1], file=sys.stderr)

                    async def mailer_level(conc: int = conc) -> tuple[Any, ...]:
                        async with mxpress.Mailer(
                            nameservers=[lab.dns_address],
                            port=port,
                            tls="required",
                            cafile=str(ca.ca_pem),
                            max_per_destination=max(conc, 1),
                            max_connections=max(conc, 1),
                            timeout=30,
                        ) as mailer:
                            # Warm-up: one send fills the DNS cache and opens one session.
                            await mailer.send(DATA)
                            return await run_mailer(mailer, conc, mx_counts.get(conc, 500))

                    before = lab.stats()["connects"]
                    tls_count.take()
                    elapsed, lat, err = uvloop.run(mailer_level())
                    connects = lab.stats()["connects"] - before
                    full, resumed = tls_count.take()
                    rows.append(
                        row(
                            "mxpress Mailer (warm)",
                            conc,
                            elapsed,
                            lat,
                            err,
                            rtt,
                            connects,
                            f"{full} full / {resumed} resumed",
                        )
                    )
                    print(rows[-1], file=sys.stderr)
                handshakes = [
                    uvloop.run(handshake_cost(port, str(ca.ca_pem), rtt, v))
                    for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
                ]
            finally:
                lab.stop()

    print(
        f"\nWAN {args.rtt_ms:.0f} ms RTT, STARTTLS to Postfix smtpd, DNS answers in "
        f"{args.dns_delay_ms:.0f} ms"
    )
    print(
        "| client | senders | messages | msgs/s | p50 ms | p99 ms | errors | TCP connects "
        "| TLS handshakes |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(r)
    print("\n| TLS | full handshake | resumed handshake | saved |")
    print("| --- | ---: | ---: | ---: |")
    for h in handshakes:
        print(h)


if __name__ == "__main__":
    main()
