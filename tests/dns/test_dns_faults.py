"""The resolver against the in-process fault-injecting server (queries counted AT
the server): single flight, delays, SERVFAIL, timeouts, truncation, TTL changes,
serve-stale, refresh-ahead, negative caching, DNS-over-TLS."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from mxpress.dns import DNSCache, Resolver
from mxpress.dns.testing import FakeDNSServer
from mxpress.errors import DNSTemporaryError, NoMX, NXDomain
from tests.dns.dns_helpers import FakeClock


async def settle(resolver: Resolver) -> None:
    """Wait (briefly) until no background query of the resolver's cache is in flight."""
    for _ in range(400):
        if not resolver.cache.in_flight():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("a background DNS query did not finish within 2 s")


def resolver_for(server: FakeDNSServer, **kwargs: object) -> Resolver:
    kwargs.setdefault("timeout", 0.3)
    return Resolver([server.address], **kwargs)  # type: ignore[arg-type]


async def test_ten_thousand_concurrent_lookups_one_upstream_query(
    fake_dns: FakeDNSServer,
) -> None:
    fake_dns.fault("example.test", "MX", delay=0.05)  # keep the first query in flight
    resolver = resolver_for(fake_dns)
    routes = await asyncio.gather(*(resolver.mx("example.test") for _ in range(10_000)))
    assert fake_dns.count("example.test", "MX") == 1
    assert fake_dns.count() == 5  # MX, then A and AAAA of both hosts: each once
    assert {tuple(h.name for h in r.hosts) for r in routes} == {
        ("mx1.example.test", "mx2.example.test")
    }
    assert resolver.stats.misses == 5 and resolver.stats.joined >= 9_999


async def test_cancelled_waiter_does_not_cancel_the_query_for_others(
    fake_dns: FakeDNSServer,
) -> None:
    fake_dns.fault("example.test", "MX", delay=0.1)
    resolver = resolver_for(fake_dns, timeout=1.0)
    first = asyncio.create_task(resolver.mx("example.test"))
    second = asyncio.create_task(resolver.mx("example.test"))
    await asyncio.sleep(0.02)
    first.cancel()
    route = await second
    assert first.cancelled()
    assert route.hosts[0].name == "mx1.example.test"
    assert fake_dns.count("example.test", "MX") == 1


async def test_servfail_is_temporary(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("example.test", "MX", rcode="SERVFAIL")
    resolver = resolver_for(fake_dns, attempts=2)
    with pytest.raises(DNSTemporaryError, match=r"MX lookup for example\.test failed.*SERVFAIL"):
        await resolver.mx("example.test")
    assert fake_dns.count("example.test", "MX") == 2  # one query per attempt
    assert resolver.stats.errors == 1


async def test_servfail_once_then_recovers_within_attempts(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("example.test", "MX", rcode="SERVFAIL", times=1)
    route = await resolver_for(fake_dns, attempts=2).mx("example.test")
    assert len(route.hosts) == 2 and fake_dns.count("example.test", "MX") == 2


async def test_no_answer_times_out_as_temporary(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("example.test", "MX", drop=True)
    resolver = resolver_for(fake_dns, timeout=0.1, attempts=2, lifetime=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DNSTemporaryError, match="no answer within") as info:
        await resolver.mx("example.test")
    assert info.value.is_transient
    assert loop.time() - start < 0.5
    assert fake_dns.count("example.test", "MX") == 2


async def test_lifetime_bounds_the_attempts(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("example.test", "MX", drop=True)
    resolver = resolver_for(fake_dns, timeout=0.1, attempts=10, lifetime=0.25)
    with pytest.raises(DNSTemporaryError):
        await resolver.mx("example.test")
    assert 2 <= fake_dns.count("example.test", "MX") <= 3


async def test_slow_answer_within_timeout(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("example.test", "MX", delay=0.05)
    route = await resolver_for(fake_dns, timeout=0.5).mx("example.test")
    assert len(route.hosts) == 2


async def test_truncation_falls_back_to_tcp(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("example.test", "MX", truncate=True)
    route = await resolver_for(fake_dns).mx("example.test")
    assert [h.name for h in route.hosts] == ["mx1.example.test", "mx2.example.test"]
    assert fake_dns.count("example.test", "MX") == 2  # UDP (truncated), then TCP
    assert fake_dns.transports["tcp"] == 1


async def test_large_answer_truncated_by_size_goes_tcp(fake_dns: FakeDNSServer) -> None:
    many = [f"127.0.1.{i}" for i in range(1, 120)]  # ~1.9 kB: over the 1232-byte EDNS size
    fake_dns.add("big.test", "A", *many)
    addresses = await resolver_for(fake_dns, ipv6=False).addresses("big.test")
    assert sorted(addresses) == sorted(many)
    assert fake_dns.transports["tcp"] == 1


async def test_one_mx_host_failing_leaves_the_others(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("mx1.example.test", rcode="SERVFAIL")
    route = await resolver_for(fake_dns, attempts=1).mx("example.test")
    hosts = {h.name: h for h in route.hosts}
    assert hosts["mx1.example.test"].addresses == []
    assert "SERVFAIL" in (hosts["mx1.example.test"].error or "")
    assert hosts["mx2.example.test"].addresses == ["127.0.0.3"]


async def test_all_mx_hosts_failing_is_temporary(fake_dns: FakeDNSServer) -> None:
    fake_dns.fault("mx1.example.test", rcode="SERVFAIL")
    fake_dns.fault("mx2.example.test", rcode="SERVFAIL")
    with pytest.raises(DNSTemporaryError, match=r"no address for any mail host of example\.test"):
        await resolver_for(fake_dns, attempts=1).mx("example.test")


async def test_negative_caching_nxdomain_and_nodata(
    fake_dns: FakeDNSServer, clock: FakeClock
) -> None:
    fake_dns.add("nodata.test", "TXT", '"no mail"')
    cache = DNSCache(min_negative_ttl=0, clock=clock)
    resolver = resolver_for(fake_dns, cache=cache)
    for _ in range(3):
        with pytest.raises(NXDomain):
            await resolver.mx("nope.test")
        with pytest.raises(NoMX):
            await resolver.mx("nodata.test")
    assert fake_dns.count("nope.test", "MX") == 1
    assert fake_dns.count("nodata.test") == 3  # MX, AAAA, A: once each
    clock.advance(30)  # the SOA minimum of the fake zone
    with pytest.raises(NXDomain):
        await resolver.mx("nope.test")
    assert fake_dns.count("nope.test", "MX") == 2
    assert resolver.stats.negative_hits == 2 + 2 * 3


async def test_changing_ttls_follow_the_server(fake_dns: FakeDNSServer, clock: FakeClock) -> None:
    resolver = resolver_for(fake_dns, cache=DNSCache(min_ttl=0, refresh_ahead=0, clock=clock))
    fake_dns.set_ttl("mx2.example.test", "A", 20)
    await resolver.addresses("mx2.example.test")
    fake_dns.set_ttl("mx2.example.test", "A", 90)
    clock.advance(19)
    await resolver.addresses("mx2.example.test")
    assert fake_dns.count("mx2.example.test", "A") == 1
    clock.advance(1)
    await resolver.addresses("mx2.example.test")
    assert fake_dns.count("mx2.example.test", "A") == 2
    entry = resolver.cache.peek("mx2.example.test", "A")
    assert entry is not None and entry.expires == clock.now + 90


async def test_serve_stale_when_upstream_fails(fake_dns: FakeDNSServer, clock: FakeClock) -> None:
    cache = DNSCache(stale_window=3600, stale_retry=30, refresh_ahead=0, clock=clock)
    resolver = resolver_for(fake_dns, cache=cache, attempts=1)
    fresh = await resolver.mx("example.test")
    assert not fresh.stale and not fresh.from_cache
    clock.advance(301)  # every record expired (TTL 300, SOA minimum 30)
    fake_dns.fault(rcode="SERVFAIL")
    stale = await resolver.mx("example.test")
    assert stale.stale and stale.from_cache
    assert [h.addresses for h in stale.hosts] == [h.addresses for h in fresh.hosts]
    assert resolver.stats.stale_served == 5
    asked = fake_dns.count()
    await resolver.mx("example.test")  # within stale_retry: no upstream query at all
    assert fake_dns.count() == asked
    clock.advance(3600)  # past the stale window: the failure shows
    with pytest.raises(DNSTemporaryError):
        await resolver.mx("example.test")


async def test_serve_stale_when_upstream_times_out(
    fake_dns: FakeDNSServer, clock: FakeClock
) -> None:
    cache = DNSCache(refresh_ahead=0, clock=clock)
    resolver = resolver_for(fake_dns, cache=cache, timeout=0.05, attempts=1)
    await resolver.addresses("mx2.example.test")
    clock.advance(301)
    fake_dns.fault(drop=True)
    assert await resolver.addresses("mx2.example.test") == ["127.0.0.3"]
    assert resolver.stats.stale_served >= 1


async def test_refresh_ahead_keeps_hot_domain_warm(
    fake_dns: FakeDNSServer, clock: FakeClock
) -> None:
    cache = DNSCache(min_ttl=0, refresh_ahead=0.2, clock=clock)
    resolver = resolver_for(fake_dns, cache=cache)
    fake_dns.add("hot.test", "MX", "10 mx.hot.test", ttl=100)
    fake_dns.add("mx.hot.test", "A", "127.0.0.7", ttl=100)  # no AAAA: NODATA, SOA min 30 s
    fake_dns.fault("hot.test", delay=0.01)  # a refresh takes a while: callers must not wait
    await resolver.mx("hot.test")
    misses = resolver.stats.misses
    assert misses == 3  # MX, A, AAAA
    for step in range(1, 23):  # 110 s of a hot domain, used every 5 s
        if step == 10:
            fake_dns.add("mx.hot.test", "A", "127.0.0.8", ttl=100)
        clock.advance(5)
        route = await resolver.mx("hot.test")
        assert route.from_cache  # served at once, never waiting for upstream
        await settle(resolver)  # let a background refresh land
    assert route.hosts[0].addresses == ["127.0.0.8"]  # the refresh brought the change
    assert resolver.stats.misses == misses  # never a miss
    assert resolver.stats.refreshes >= 5
    assert fake_dns.count("hot.test", "MX") == 2


async def test_addresses_errors(fake_dns: FakeDNSServer) -> None:
    resolver = resolver_for(fake_dns)
    assert await resolver.addresses("127.0.0.9") == ["127.0.0.9"]
    assert await resolver.addresses("::1") == ["::1"]
    with pytest.raises(NXDomain, match=r"host nope\.test does not exist"):
        await resolver.addresses("nope.test")
    fake_dns.add("textonly.test", "TXT", '"x"')
    with pytest.raises(NoMX, match=r"host textonly\.test has no A/AAAA"):
        await resolver.addresses("textonly.test")


async def test_query_returns_any_answer_negative_ones_too(fake_dns: FakeDNSServer) -> None:
    resolver = resolver_for(fake_dns)
    answer = await resolver.query("Example.test.", "mx")
    assert answer.rdtype == "MX" and answer.negative is None
    assert [r.exchange for r in answer.records] == ["mx1.example.test", "mx2.example.test"]
    missing = await resolver.query("nope.test", "A")
    assert missing.negative == "nxdomain" and missing.ttl == 30
    await resolver.query("example.test", "MX")
    assert fake_dns.count("example.test", "MX") == 1


async def test_address_literal_domain_needs_no_dns(fake_dns: FakeDNSServer) -> None:
    route = await resolver_for(fake_dns).mx("[127.0.0.5]")
    assert route.implicit and route.hosts[0].addresses == ["127.0.0.5"]
    assert fake_dns.count() == 0


async def test_bypassing_the_cache_asks_every_time(fake_dns: FakeDNSServer) -> None:
    resolver = resolver_for(fake_dns)
    for _ in range(3):
        route = await resolver.mx("example.test", use_cache=False)
        assert not route.from_cache
    assert fake_dns.count("example.test", "MX") == 3
    assert len(resolver.cache) == 0


async def test_shared_cache_between_resolvers(fake_dns: FakeDNSServer) -> None:
    cache = DNSCache()
    one = resolver_for(fake_dns, cache=cache)
    two = resolver_for(fake_dns, cache=cache)
    await one.mx("example.test")
    route = await two.mx("example.test")
    assert route.from_cache and two.stats.upstream_queries == 0
    assert fake_dns.count("example.test", "MX") == 1


async def test_dns_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("dns.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with FakeDNSServer(tls=server_ctx) as server:
        server.add("tls.test", "MX", "10 mx.tls.test")
        server.add("mx.tls.test", "A", "127.0.0.6")
        resolver = Resolver(
            [f"tls://127.0.0.1:{server.port}#dns.test"], tls_verify=str(ca_file), timeout=2.0
        )
        route = await resolver.mx("tls.test")
        assert route.hosts[0].addresses == ["127.0.0.6"]
        assert server.transports == {"tcp": 3}  # MX, AAAA, A: all over TLS
        wrong_name = Resolver(
            [f"tls://127.0.0.1:{server.port}#other.test"],
            tls_verify=str(ca_file),
            timeout=1.0,
            attempts=1,
        )
        with pytest.raises(DNSTemporaryError) as caught:
            await wrong_name.mx("tls.test")
        assert "Hostname mismatch" in str(caught.value)  # the cause, named
