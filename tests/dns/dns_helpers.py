"""Helpers shared by the DNS tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# The test zone, served by dnsmasq. Every name is under .test and every address
# is loopback; no test ever connects to these addresses, they are only data.
ZONE = """\
mx-host=order.test,mx1.order.test,10
mx-host=order.test,mx2.order.test,20
mx-host=order.test,mx3.order.test,20
mx-host=order.test,mx1.order.test,30
host-record=mx1.order.test,127.0.0.11,::11,40
host-record=mx2.order.test,127.0.0.12,50
host-record=mx3.order.test,127.0.0.13,::13,50
host-record=implicit.test,127.0.0.20,::20
mx-host=nullmx.test,.,0
txt-record=nodata.test,"no mail here"
cname=alias.test,implicit.test,30
mx-host=viacname.test,mxalias.test,10
cname=mxalias.test,mx2.order.test
mx-host=xn--bcher-kva.test,mx1.order.test,5
mx-host=deadhosts.test,missing.test,10
host-record=short.test,127.0.0.40,2
"""
# Local mode honours per-record TTLs (host-record, cname) but sends no SOA with
# negative answers; auth mode sends the SOA (minimum = auth-ttl) but uses
# auth-ttl for every record. So the zone is served twice, once each way.
LOCAL_MODE = "local=/test/\nlocal-ttl=60\n"
AUTH_MODE = (
    "auth-server=ns.test,127.0.0.1\nauth-zone=test\n"
    "auth-soa=2024010101,hostmaster.test,1200,180,1209600\nauth-ttl=9\n"
)
AUTH_TTL = 9


@dataclass
class Dnsmasq:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def lab_binary(name: str, package: str) -> str:
    """Path of a lab server's binary; without it the test fails in CI, else skips."""
    found = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(path)),
        None,
    )
    if found is None:
        message = f"{name} is not installed (Debian package {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def dnsmasq_binary() -> str:
    return lab_binary("dnsmasq", "dnsmasq-base or dnsmasq")


def answers(process: subprocess.Popen[bytes], port: int, name: str) -> bool:
    """Wait (up to 10 s, while `process` runs) until 127.0.0.1:`port` answers for `name`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            query = dns.message.make_query(name, "A")
            if dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2).answer:
                return True
        except (dns.exception.Timeout, OSError):
            pass
        time.sleep(0.05)
    return False


def start_dnsmasq(
    workdir: Path, mode: str, zone: str = ZONE, probe: str = "mx1.order.test"
) -> Dnsmasq:
    """dnsmasq serving `zone`; `probe` is a name in it whose answer says it is up."""
    binary = dnsmasq_binary()
    conf = workdir / "dnsmasq.conf"
    conf.write_text(zone + mode)
    last_error = ""
    for _ in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                f"--port={port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--conf-file={conf}",
                f"--pid-file={workdir / 'dnsmasq.pid'}",
                "--log-facility=-",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if answers(process, port, probe):
            return Dnsmasq(port, process)
        process.kill()
        out, _ = process.communicate()
        last_error = out.decode(errors="replace")
    pytest.fail(f"dnsmasq did not start: {last_error}")


def stop_dnsmasq(server: Dnsmasq) -> None:
    stop_process(server.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@dataclass
class Dnsdist:
    """dnsdist answering DNS-over-HTTPS at `url`, forwarding to a dnsmasq."""

    url: str
    ca_pem: Path  # the CA that signed the server's certificate
    process: subprocess.Popen[bytes]


def start_dnsdist(
    workdir: Path, upstream: Dnsmasq, cert_pem: Path, key_pem: Path, ca_pem: Path
) -> Dnsdist:
    """A real DoH server (PowerDNS dnsdist) in front of `upstream`, on 127.0.0.1 only,
    presenting `cert_pem` (signed by `ca_pem`)."""
    binary = lab_binary("dnsdist", "dnsdist")
    last_error = ""
    for _ in range(3):  # the free ports may be taken between probe and bind
        plain, doh = free_port(), free_port()
        conf = workdir / "dnsdist.lua"
        conf.write_text(
            # No security poll: it would query the outside world.
            'setSecurityPollSuffix("")\n'
            f'setLocal("127.0.0.1:{plain}")\n'
            f'newServer({{address="{upstream.address}", checkName="mx1.order.test."}})\n'
            f'addDOHLocal("127.0.0.1:{doh}", "{cert_pem}", "{key_pem}", "/dns-query")\n'
        )
        process = subprocess.Popen(
            [binary, "--supervised", "--disable-syslog", "-C", str(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # Up once it answers over its own plain port (its backend is checked).
        if answers(process, plain, "mx1.order.test"):
            return Dnsdist(f"https://127.0.0.1:{doh}/dns-query", ca_pem, process)
        process.kill()
        out, _ = process.communicate()
        last_error = out.decode(errors="replace")
    pytest.fail(f"dnsdist did not start: {last_error}")


def stop_dnsdist(server: Dnsdist) -> None:
    stop_process(server.process)
