"""MX resolution against a real DNS server: dnsmasq serving the test zone on loopback."""

from __future__ import annotations

import random

import pytest

from mxpress.dns import DNSCache, Resolver
from mxpress.errors import DNSTemporaryError, NoMX, NullMX, NXDomain
from tests.dns import dns_helpers
from tests.dns.dns_helpers import AUTH_TTL, Dnsmasq, FakeClock, free_port

pytestmark = pytest.mark.lab


def resolver_for(server: Dnsmasq, **kwargs: object) -> Resolver:
    return Resolver([server.address], timeout=1.0, **kwargs)  # type: ignore[arg-type]


async def test_mx_order_dedupe_and_tie_shuffle(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq, rng=random.Random(3))
    orders = set()
    for _ in range(30):
        route = await resolver.mx("order.test")
        first = route.hosts[0]
        assert (first.preference, first.name) == (10, "mx1.order.test")
        assert sorted(h.name for h in route.hosts[1:]) == ["mx2.order.test", "mx3.order.test"]
        assert [h.preference for h in route.hosts] == [10, 20, 20]  # mx1's 30 dropped
        orders.add(tuple(h.name for h in route.hosts))
    assert len(orders) == 2  # both orders of the two preference-20 hosts occur
    assert not route.implicit and not route.null_mx
    assert resolver.stats.upstream_queries == 7  # MX + A/AAAA of 3 hosts, once


async def test_aaaa_and_a_addresses_ipv6_first(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    route = await resolver.mx("order.test")
    by_name = {h.name: h.addresses for h in route.hosts}
    assert by_name == {
        "mx1.order.test": ["::11", "127.0.0.11"],
        "mx2.order.test": ["127.0.0.12"],
        "mx3.order.test": ["::13", "127.0.0.13"],
    }
    assert await resolver.addresses("mx3.order.test") == ["::13", "127.0.0.13"]
    v4 = resolver_for(dnsmasq, ipv6=False)
    assert await v4.addresses("mx3.order.test") == ["127.0.0.13"]


async def test_ttls_are_the_records_ttls(dnsmasq: Dnsmasq, clock: FakeClock) -> None:
    resolver = resolver_for(dnsmasq, cache=DNSCache(min_ttl=0, refresh_ahead=0, clock=clock))
    route = await resolver.mx("order.test")
    ttls = {h.name: h.ttl for h in route.hosts}
    # mx1 has A+AAAA at 40 s; mx2 has A at 50 s and no AAAA (NODATA without SOA:
    # not cached beyond the cache's negative floor of 5 s).
    assert ttls["mx1.order.test"] == 40
    assert ttls["mx2.order.test"] == 5
    assert route.ttl == 5 and route.expires == clock.now + 5


async def test_ttl_expiry_queries_again(dnsmasq: Dnsmasq, clock: FakeClock) -> None:
    resolver = resolver_for(dnsmasq, cache=DNSCache(min_ttl=0, refresh_ahead=0, clock=clock))
    assert await resolver.addresses("short.test") == ["127.0.0.40"]
    queries = resolver.stats.upstream_queries
    entry = resolver.cache.peek("short.test", "A")
    assert entry is not None and entry.answer.ttl == 2
    clock.advance(1.9)
    await resolver.addresses("short.test")
    assert resolver.stats.upstream_queries == queries
    clock.advance(0.2)
    await resolver.addresses("short.test")
    assert resolver.stats.upstream_queries > queries


async def test_implicit_mx(dnsmasq: Dnsmasq) -> None:
    route = await resolver_for(dnsmasq).mx("implicit.test")
    assert route.implicit
    assert [(h.name, h.preference, h.addresses) for h in route.hosts] == [
        ("implicit.test", 0, ["::20", "127.0.0.20"])
    ]


async def test_null_mx(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    with pytest.raises(NullMX, match=r"nullmx\.test publishes a null MX \(RFC 7505\)") as info:
        await resolver.mx("nullmx.test")
    assert not info.value.is_transient and info.value.name == "nullmx.test"
    route = await resolver.mx("nullmx.test", raise_errors=False)
    assert route.null_mx and route.hosts == [] and isinstance(route.error, NullMX)
    # no fallback to the domain's addresses: only the MX query was made
    assert resolver.stats.upstream_queries == 1


async def test_nxdomain(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    with pytest.raises(NXDomain, match=r"domain nope\.test does not exist") as info:
        await resolver.mx("nope.test")
    assert not info.value.is_transient


async def test_nodata_no_mx_no_address(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(NoMX, match=r"nodata\.test has no MX and no A/AAAA") as info:
        await resolver_for(dnsmasq).mx("nodata.test")
    assert type(info.value) is NoMX


async def test_mx_host_that_does_not_exist(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(NoMX, match=r"none of the MX hosts of deadhosts\.test") as info:
        await resolver_for(dnsmasq).mx("deadhosts.test")
    assert "missing.test does not exist" in str(info.value)


async def test_cname_domain_and_cname_mx_host(dnsmasq: Dnsmasq, clock: FakeClock) -> None:
    resolver = resolver_for(dnsmasq, cache=DNSCache(min_ttl=0, refresh_ahead=0, clock=clock))
    # alias.test is a CNAME to implicit.test, which has no MX: implicit MX on the alias.
    route = await resolver.mx("alias.test")
    assert route.implicit and route.hosts[0].addresses == ["::20", "127.0.0.20"]
    entry = resolver.cache.peek("alias.test", "A")
    assert entry is not None and entry.answer.ttl == 30  # the CNAME's TTL, smallest of the chain
    # An MX host that is a CNAME (not allowed by RFC 2181, seen in the wild) still resolves.
    route = await resolver.mx("viacname.test")
    assert [(h.name, h.addresses) for h in route.hosts] == [("mxalias.test", ["127.0.0.12"])]


async def test_idna_domain(dnsmasq: Dnsmasq) -> None:
    resolver = resolver_for(dnsmasq)
    route = await resolver.mx("Bücher.test")
    assert route.domain == "xn--bcher-kva.test"
    assert [(h.preference, h.name) for h in route.hosts] == [(5, "mx1.order.test")]
    again = await resolver.mx("xn--bcher-kva.test")
    assert again.from_cache


async def test_tcp_only(dnsmasq: Dnsmasq) -> None:
    route = await resolver_for(dnsmasq, tcp=True).mx("order.test")
    assert len(route.hosts) == 3


async def test_negative_caching_uses_the_soa_minimum(
    dnsmasq_auth: Dnsmasq, clock: FakeClock
) -> None:
    resolver = resolver_for(dnsmasq_auth, cache=DNSCache(min_negative_ttl=0, clock=clock))
    for domain in ("nope.test", "nodata.test"):
        with pytest.raises((NXDomain, NoMX)):
            await resolver.mx(domain)
    entry = resolver.cache.peek("nope.test", "MX")
    assert entry is not None and entry.answer.negative == "nxdomain"
    assert entry.answer.ttl == AUTH_TTL
    entry = resolver.cache.peek("nodata.test", "MX")
    assert entry is not None and entry.answer.negative == "nodata"
    assert entry.answer.ttl == AUTH_TTL
    queries = resolver.stats.upstream_queries
    with pytest.raises(NXDomain):
        await resolver.mx("nope.test")
    assert resolver.stats.upstream_queries == queries and resolver.stats.negative_hits >= 1
    clock.advance(AUTH_TTL)
    with pytest.raises(NXDomain):
        await resolver.mx("nope.test")
    assert resolver.stats.upstream_queries == queries + 1


async def test_unreachable_nameserver_is_temporary() -> None:
    # A loopback port nobody listens on: ICMP port unreachable, a quick failure.
    resolver = Resolver([f"127.0.0.1:{free_port()}"], timeout=0.1, lifetime=0.2)
    with pytest.raises(DNSTemporaryError, match=r"MX lookup for order\.test failed") as info:
        await resolver.mx("order.test")
    assert info.value.is_transient


@pytest.mark.parametrize(("ci", "outcome"), [("true", "fail"), ("", "skip")])
def test_missing_dnsmasq_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: str
) -> None:
    monkeypatch.setattr(dns_helpers.shutil, "which", lambda _name: None)
    monkeypatch.setattr(dns_helpers.os.path, "exists", lambda _path: False)
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="dnsmasq is not installed"):
        dns_helpers.dnsmasq_binary()
