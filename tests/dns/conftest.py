"""Fixtures for the DNS layer: a real dnsmasq on loopback, the in-process fault
server, and a fake clock. Only 127.0.0.0/8 is ever contacted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import mxpress.dns.upstream
from mxpress.dns.testing import FakeDNSServer
from tests.dns.dns_helpers import (
    AUTH_MODE,
    LOCAL_MODE,
    Dnsdist,
    Dnsmasq,
    FakeClock,
    start_dnsdist,
    start_dnsmasq,
    stop_dnsdist,
    stop_dnsmasq,
)
from tests.lab.servers import make_test_ca


@pytest.fixture(autouse=True)
def _no_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver built without nameservers must never reach the system's."""

    def refuse() -> list[object]:
        raise AssertionError("a test tried to use the system resolver; pass nameservers=")

    monkeypatch.setattr(mxpress.dns.upstream, "system_nameservers", refuse)


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """dnsmasq serving the test zone with per-record TTLs (no SOA on negative answers)."""
    server = start_dnsmasq(tmp_path_factory.mktemp("dnsmasq-local"), LOCAL_MODE)
    yield server
    stop_dnsmasq(server)


@pytest.fixture(scope="session")
def dnsmasq_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """dnsmasq serving the test zone authoritatively (SOA on negative answers)."""
    server = start_dnsmasq(tmp_path_factory.mktemp("dnsmasq-auth"), AUTH_MODE)
    yield server
    stop_dnsmasq(server)


@pytest.fixture(scope="session")
def doh_server(dnsmasq: Dnsmasq, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsdist]:
    """dnsdist serving DNS-over-HTTPS for the test zone, with a lab CA's certificate."""
    workdir = tmp_path_factory.mktemp("dnsdist")
    ca = make_test_ca(workdir)
    server = start_dnsdist(workdir, dnsmasq, ca.cert_pem, ca.key_pem, ca.ca_pem)
    yield server
    stop_dnsdist(server)


@pytest.fixture
async def fake_dns() -> AsyncIterator[FakeDNSServer]:
    """The in-process fault-injecting server: zone `test`, SOA minimum 30 s."""
    server = FakeDNSServer(soa_minimum=30)
    server.add("example.test", "MX", "10 mx1.example.test", "20 mx2.example.test")
    server.add("mx1.example.test", "A", "127.0.0.2")
    server.add("mx1.example.test", "AAAA", "::2")
    server.add("mx2.example.test", "A", "127.0.0.3")
    async with server:
        yield server
    assert not server.errors, f"the fake DNS server failed: {server.errors}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
