"""RFC 5321 §5.1 / RFC 7505 rules as pure functions, and nameserver specs."""

from __future__ import annotations

import random

import dns.nameserver
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxpress.dns import DNSCache, Resolver
from mxpress.dns.mx import (
    MXRecord,
    address_literal,
    dedupe_mx,
    fast_normalize,
    is_null_mx,
    normalize_domain,
    order_mx,
)
from mxpress.dns.upstream import parse_nameserver
from mxpress.errors import ConfigError, DNSError


def test_order_by_preference_and_dedupe_keeps_best_preference() -> None:
    records = [
        MXRecord(30, "c.test"),
        MXRecord(10, "a.test"),
        MXRecord(20, "b.test"),
        MXRecord(5, "b.test"),  # same host again, better preference
    ]
    assert order_mx(records, random.Random(1)) == [
        MXRecord(5, "b.test"),
        MXRecord(10, "a.test"),
        MXRecord(30, "c.test"),
    ]


def test_equal_preferences_are_shuffled_and_others_stay_in_place() -> None:
    records = [MXRecord(10, "first.test")] + [MXRecord(20, f"h{i}.test") for i in range(4)]
    seen = set()
    for seed in range(50):
        ordered = order_mx(records, random.Random(seed))
        assert ordered[0] == MXRecord(10, "first.test")
        assert sorted(ordered[1:]) == sorted(records[1:])
        seen.add(tuple(r.exchange for r in ordered[1:]))
    assert len(seen) > 10  # many of the 24 permutations occur


def test_same_seed_same_order() -> None:
    records = [MXRecord(10, f"h{i}.test") for i in range(5)]
    assert order_mx(records, random.Random(7)) == order_mx(records, random.Random(7))


@given(st.lists(st.tuples(st.integers(0, 65535), st.sampled_from("abcdef.")), max_size=20))
def test_order_properties(pairs: list[tuple[int, str]]) -> None:
    records = [MXRecord(p, h if h == "." else f"{h}.test") for p, h in pairs]
    ordered = order_mx(records, random.Random(0))
    prefs = [r.preference for r in ordered]
    hosts = [r.exchange for r in ordered]
    assert prefs == sorted(prefs)
    assert len(hosts) == len(set(hosts))
    assert "." not in hosts
    expected = {h: min(p for p, x in records if x == h) for _, h in records if h != "."}
    assert dict((r.exchange, r.preference) for r in ordered) == expected


def test_null_mx() -> None:
    assert is_null_mx([MXRecord(0, ".")])
    assert not is_null_mx([])
    assert not is_null_mx([MXRecord(0, "."), MXRecord(10, "mx.test")])
    # A stray "." next to real hosts is ignored rather than blocking mail.
    assert dedupe_mx([MXRecord(0, "."), MXRecord(10, "mx.test")]) == [MXRecord(10, "mx.test")]


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("bücher.test", "xn--bcher-kva.test"),
        ("BÜCHER.test", "xn--bcher-kva.test"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008: ß is kept, not mapped to ss
        ("_dmarc.example.com", "_dmarc.example.com"),
    ],
)
def test_normalize_domain(given_name: str, expected: str) -> None:
    assert normalize_domain(given_name) == expected
    assert fast_normalize(given_name) in (None, expected)  # the fast path never differs


@given(st.text(alphabet="abcXYZ019-_.", max_size=70) | st.text(max_size=8))
def test_fast_normalize_agrees_with_the_full_one(text: str) -> None:
    fast = fast_normalize(text)
    if fast is None:
        return  # not the common case: the full path decides
    assert fast == normalize_domain(text)


@pytest.mark.parametrize("bad", ["", ".", "a..b", "-a.test", "a b.test", "x" * 64 + ".test"])
def test_normalize_domain_rejects(bad: str) -> None:
    with pytest.raises(DNSError, match="invalid domain"):
        normalize_domain(bad)


def test_address_literal() -> None:
    assert address_literal("[127.0.0.1]") == "127.0.0.1"
    assert address_literal("[IPv6:::1]") == "::1"
    assert address_literal("example.test") is None
    with pytest.raises(DNSError, match="invalid address literal"):
        address_literal("[not-an-ip]")


def test_parse_nameserver_forms() -> None:
    ns = parse_nameserver("127.0.0.1")
    assert isinstance(ns, dns.nameserver.Do53Nameserver)
    assert (ns.address, ns.port) == ("127.0.0.1", 53)
    ns = parse_nameserver("127.0.0.1:5353")
    assert (ns.address, ns.port) == ("127.0.0.1", 5353)
    ns = parse_nameserver("[::1]:5353")
    assert (ns.address, ns.port) == ("::1", 5353)
    ns = parse_nameserver("::1")
    assert (ns.address, ns.port) == ("::1", 53)
    dot = parse_nameserver("tls://127.0.0.1#dns.test", tls_verify=False)
    assert isinstance(dot, dns.nameserver.DoTNameserver)
    assert (dot.address, dot.port, dot.hostname) == ("127.0.0.1", 853, "dns.test")
    assert dot.verify is False


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dns.example", "not an IP address"),
        ("127.0.0.1:0", "not 1-65535"),
        ("127.0.0.1:http", "not 1-65535"),
        ("[::1", "unbalanced"),
        ("udp://127.0.0.1", "unknown scheme"),
    ],
)
def test_parse_nameserver_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_nameserver(spec)


def test_doh_needs_the_extra_or_builds_a_doh_nameserver() -> None:
    try:
        ns = parse_nameserver("https://127.0.0.1/dns-query")
    except ConfigError as exc:
        assert "dnspython[doh]" in str(exc)
    else:
        assert isinstance(ns, dns.nameserver.DoHNameserver)


def test_resolver_config_errors() -> None:
    with pytest.raises(ConfigError, match="attempts"):
        Resolver(["127.0.0.1"], attempts=0)
    with pytest.raises(ConfigError, match="timeout"):
        Resolver(["127.0.0.1"], timeout=0)
    with pytest.raises(ConfigError, match="address family"):
        Resolver(["127.0.0.1"], ipv4=False, ipv6=False)
    with pytest.raises(ConfigError, match="clock to the shared DNSCache"):
        Resolver(["127.0.0.1"], cache=DNSCache(), clock=lambda: 0.0)
    own = Resolver(["127.0.0.1"], clock=lambda: 42.0)
    assert own.cache.clock() == 42.0


def test_default_nameservers_never_reach_the_system_in_tests() -> None:
    with pytest.raises(AssertionError, match="system resolver"):
        Resolver()
