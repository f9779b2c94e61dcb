"""MX rules as pure functions: RFC 5321 §5.1 ordering and RFC 7505 null MX.

Nothing here does I/O; randomness comes from an injected `random.Random` so
tests can pin the equal-preference shuffle.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

import dns.exception
import dns.name

from mxpress.errors import DNSError

# RFC 1035 limits; underscores are tolerated because real zones use them.
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_MAX_NAME = 253
_LDH_NAME = re.compile(r"(?:(?!-)[a-z0-9_-]{1,63}(?<!-)\.)*(?!-)[a-z0-9_-]{1,63}(?<!-)")


class MXRecord(NamedTuple):
    """One MX record as published: preference and exchange (ASCII, no final dot)."""

    preference: int
    exchange: str


@dataclass(slots=True)
class MXHost:
    """A delivery host: try `addresses` (IPv6 first, then IPv4) in order."""

    name: str
    preference: int
    addresses: list[str] = field(default_factory=list)
    ttl: float = 0.0
    # Why this host has no addresses (e.g. its A lookup timed out); None when fine.
    error: str | None = None


@dataclass(slots=True)
class MXRoute:
    """Where mail for `domain` goes: hosts in the order they must be tried."""

    domain: str
    hosts: list[MXHost]
    implicit: bool = False
    null_mx: bool = False
    # Seconds the route stays valid, and the clock value when it expires.
    ttl: float = 0.0
    expires: float = 0.0
    # True when no upstream query was needed; `stale` when an expired answer was
    # served because the upstream failed (RFC 8767).
    from_cache: bool = False
    stale: bool = False
    # Set only by `Resolver.mx(..., raise_errors=False)`: why the lookup failed.
    error: DNSError | None = None
    # Of the time this lookup took, the seconds spent on the hosts' addresses (A/AAAA)
    # after the MX answer (0 when they came from the cache): the "DNS address" phase.
    address_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def fast_normalize(domain: str) -> str | None:
    """`normalize_domain` for the common case (plain ASCII LDH), cheaply; None otherwise."""
    name = domain.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > _MAX_NAME or not name.isascii() or not _LDH_NAME.fullmatch(name):
        return None
    return name


def normalize_domain(domain: str) -> str:
    """Return the lower-case ASCII (IDNA) form of `domain`, without the final dot.

    Unicode names are converted with IDNA 2008 (UTS 46 mapping), so
    ``"Bücher.Example"`` becomes ``"xn--bcher-kva.example"``.
    """
    text = domain.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise DNSError(f"invalid domain {domain!r}: it is empty", name=domain)
    try:
        name = dns.name.from_text(text, origin=dns.name.root)
        ascii_name = name.to_text(omit_final_dot=True).lower()
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DNSError(f"invalid domain {domain!r}: {exc}", name=domain) from exc
    labels = ascii_name.split(".")
    if len(ascii_name) > _MAX_NAME or not all(_LABEL.match(label) for label in labels):
        raise DNSError(
            f"invalid domain {domain!r}: labels must be letters, digits and hyphens "
            f"(1-63 each, {_MAX_NAME} in all)",
            name=domain,
        )
    return ascii_name


def address_literal(domain: str) -> str | None:
    """The IP inside an RFC 5321 address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``)."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError as exc:
        raise DNSError(f"invalid address literal {domain!r}: {exc}", name=domain) from exc


def is_null_mx(records: Sequence[MXRecord]) -> bool:
    """True when the MX set says "no mail" (RFC 7505).

    The RFC's form is a single ``0 .`` record; a set made only of ``.`` targets
    (whatever the preference) is read the same way, as it names no host at all.
    """
    return bool(records) and all(r.exchange == "." for r in records)


def dedupe_mx(records: Iterable[MXRecord]) -> list[MXRecord]:
    """Drop `.` targets and duplicate hosts (keeping each host's best preference); sort."""
    best: dict[str, int] = {}
    for pref, host in records:
        if host == ".":
            continue
        if host not in best or pref < best[host]:
            best[host] = pref
    return sorted(
        (MXRecord(p, h) for h, p in best.items()), key=lambda r: (r.preference, r.exchange)
    )


def order_mx(records: Iterable[MXRecord], rng: random.Random) -> list[MXRecord]:
    """RFC 5321 §5.1: by preference, hosts of equal preference in random order."""
    ordered = dedupe_mx(records)
    return shuffle_ties(ordered, rng)


class _Preferred(Protocol):
    @property
    def preference(self) -> int: ...


_P = TypeVar("_P", bound=_Preferred)


def shuffle_ties(ordered: list[_P], rng: random.Random) -> list[_P]:
    """Shuffle runs of equal preference in a list sorted by preference."""
    out: list[_P] = []
    i = 0
    n = len(ordered)
    while i < n:
        j = i + 1
        pref = ordered[i].preference
        while j < n and ordered[j].preference == pref:
            j += 1
        if j - i == 1:
            out.append(ordered[i])
        else:
            run = ordered[i:j]
            rng.shuffle(run)
            out.extend(run)
        i = j
    return out
