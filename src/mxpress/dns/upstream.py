"""The dnspython adapter: nameserver parsing and one (name, type) query -> `Answer`.

dnspython does the wire work: UDP with TCP fallback on truncation, DNS-over-TLS
and DNS-over-HTTPS nameserver classes, CNAME chasing. This module maps its
outcomes onto mxpress's terms: a positive or negative `Answer`, or a
`DNSTemporaryError` / `DNSError` that names the domain and the servers asked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import time
from collections.abc import Sequence
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from mxpress.dns.cache import Answer, DNSStats
from mxpress.dns.mx import MXRecord, dedupe_mx
from mxpress.errors import ConfigError, DNSError, DNSTemporaryError

NameserverSpec = str | dns.nameserver.Nameserver
TLSVerify = bool | str | os.PathLike[str]

_SPEC_HELP = "use IP, IP:PORT, [IPv6]:PORT, tls://IP[:PORT][#tls-name] or https://URL"


def _split_host_port(text: str, default_port: int, spec: str) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"nameserver {spec!r}: unbalanced brackets; {_SPEC_HELP}")
        port_text = rest[1:]
    elif text.count(":") == 1:  # IPv4:port; a bare IPv6 address has several colons
        host, _, port_text = text.partition(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(
            f"nameserver {spec!r}: {host!r} is not an IP address; {_SPEC_HELP}"
        ) from None
    if not port_text:
        return address, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"nameserver {spec!r}: port {port_text!r} is not 1-65535")
    return address, int(port_text)


def parse_nameserver(
    spec: NameserverSpec, *, tls_verify: TLSVerify = True
) -> dns.nameserver.Nameserver:
    """Turn a nameserver spec into a dnspython nameserver object.

    ``127.0.0.1``, ``127.0.0.1:5353``, ``[::1]:5353``: plain DNS (UDP, TCP on truncation).
    ``tls://127.0.0.1:853#dns.example``: DNS-over-TLS, verifying the name after ``#``.
    ``https://dns.example/dns-query``: DNS-over-HTTPS (needs dnspython's ``doh`` extra).
    """
    if isinstance(spec, dns.nameserver.Nameserver):
        return spec
    text = spec.strip()
    lowered = text.lower()
    if lowered.startswith("https://"):
        if not _have_doh():
            raise ConfigError(
                f"nameserver {spec!r}: DNS-over-HTTPS needs dnspython's doh extra "
                "(pip install 'dnspython[doh]')"
            )
        try:
            verify = _doh_verify(tls_verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"nameserver {spec!r}: cannot load the CA certificates {tls_verify!s}: {exc}"
            ) from exc
        return _DoHNameserver(text, verify=verify)  # type: ignore[arg-type]
    if lowered.startswith("tls://"):
        rest, _, tls_name = text[6:].partition("#")
        address, port = _split_host_port(rest, 853, spec)
        return _DoTNameserver(address, port, hostname=tls_name or None, verify=tls_verify)
    if "://" in text:
        raise ConfigError(f"nameserver {spec!r}: unknown scheme; {_SPEC_HELP}")
    address, port = _split_host_port(text, 53, spec)
    return dns.nameserver.Do53Nameserver(address, port)


class _RemembersFailure:
    """An encrypted nameserver that keeps its last failure. dnspython retries a DoT or
    DoH server's errors (a refused certificate, a refused connection) until the time is
    up, and then reports only the timeout: this keeps the cause for the message."""

    last_error: Exception | None = None

    async def async_query(self, *args: Any, **kwargs: Any) -> dns.message.Message:
        try:
            response: dns.message.Message = await super().async_query(*args, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            self.last_error = exc
            raise
        self.last_error = None
        return response


class _DoHNameserver(_RemembersFailure, dns.nameserver.DoHNameserver):
    pass


class _DoTNameserver(_RemembersFailure, dns.nameserver.DoTNameserver):
    pass


def _doh_verify(tls_verify: TLSVerify) -> bool | ssl.SSLContext:
    """A CA file or directory as an SSLContext: httpx deprecates paths for `verify`, and
    dnspython hands the value to it unchanged (its annotation lags behind)."""
    if isinstance(tls_verify, bool):
        return tls_verify
    if os.path.isdir(tls_verify):
        return ssl.create_default_context(capath=tls_verify)
    return ssl.create_default_context(cafile=tls_verify)


def _have_doh() -> bool:
    try:
        import dns._features

        return bool(dns._features.have("doh"))
    except Exception:  # an unknown dnspython layout: let the query report it
        return True


def system_nameservers() -> list[dns.nameserver.Nameserver]:
    """The nameservers of the system configuration (/etc/resolv.conf)."""
    try:
        system = dns.resolver.Resolver(configure=True)
    except dns.exception.DNSException as exc:
        raise ConfigError(
            f"no system DNS configuration ({exc}); pass nameservers explicitly"
        ) from exc
    return [parse_nameserver(ns) if isinstance(ns, str) else ns for ns in system.nameservers]


def describe(nameserver: dns.nameserver.Nameserver) -> str:
    if isinstance(nameserver, dns.nameserver.DoHNameserver):
        return str(nameserver)
    ns = cast(dns.nameserver.AddressAndPortNameserver, nameserver)
    address = f"[{ns.address}]" if ":" in ns.address else ns.address
    prefix = "tls://" if isinstance(ns, dns.nameserver.DoTNameserver) else ""
    return f"{prefix}{address}:{ns.port}"


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM), and no longer than any CNAME on the way.

    Without a SOA the answer should not be cached: 0 (the cache's floor applies).
    """
    if response is None:
        return 0.0
    ttl: float | None = None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            soa_ttl = min(rrset.ttl, rrset[0].minimum)
            ttl = soa_ttl if ttl is None else min(ttl, soa_ttl)
    if ttl is None:
        return 0.0
    for rrset in response.answer:
        ttl = min(ttl, rrset.ttl)
    return float(ttl)


class Upstream:
    """Asks the configured nameservers; `fetch` is the cache's miss handler."""

    def __init__(
        self,
        nameservers: Sequence[NameserverSpec] | None = None,
        *,
        timeout: float = 2.0,
        lifetime: float = 6.0,
        attempts: int = 2,
        tcp: bool = False,
        tls_verify: TLSVerify = True,
        edns_payload: int = 1232,
        stats: DNSStats | None = None,
    ) -> None:
        if not timeout > 0 or not lifetime > 0:
            raise ConfigError(f"DNS timeout ({timeout!r}) and lifetime ({lifetime!r}) must be > 0")
        if attempts < 1:
            raise ConfigError(f"DNS attempts={attempts!r} must be >= 1")
        if nameservers is None:
            resolved = system_nameservers()
        else:
            resolved = [parse_nameserver(ns, tls_verify=tls_verify) for ns in nameservers]
        if not resolved:
            raise ConfigError("no DNS nameservers: pass at least one (IP[:PORT])")
        self.nameservers = resolved
        self.timeout = float(timeout)
        self.lifetime = float(lifetime)
        self.attempts = attempts
        self.tcp = tcp
        self.stats = stats if stats is not None else DNSStats()
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = list(resolved)
        res.timeout = self.timeout
        res.lifetime = self.lifetime
        # Mail lookups are for fully qualified names: never try search domains.
        res.search = []
        res.use_search_by_default = False
        res.retry_servfail = False  # we retry per attempt, see fetch()
        res.use_edns(0, 0, edns_payload)
        self._dns = res

    def describe(self) -> str:
        return ", ".join(describe(ns) for ns in self.nameservers)

    async def fetch(self, name: str, rdtype: str) -> Answer:
        """One lookup with up to `attempts` rounds over the nameservers, within `lifetime`."""
        qname = dns.name.from_text(name, origin=dns.name.root)
        deadline = time.monotonic() + self.lifetime
        # One round: every nameserver gets one `timeout`; dnspython moves to the next.
        round_time = self.timeout * len(self.nameservers)
        reason = "no attempt was made"
        for _ in range(self.attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for ns in self.nameservers:
                if isinstance(ns, _RemembersFailure):
                    ns.last_error = None
            self.stats.upstream_queries += 1
            budget = min(remaining, round_time)
            try:
                # Our own deadline ends the round: dnspython would first sleep a
                # backoff before noticing that its lifetime is over.
                async with asyncio.timeout(budget):
                    answer = await self._dns.resolve(
                        qname,
                        rdtype,
                        tcp=self.tcp,
                        raise_on_no_answer=False,
                        lifetime=budget + 1.0,
                        search=False,
                    )
            except dns.resolver.NXDOMAIN as exc:
                try:
                    response: dns.message.Message | None = exc.response(qname)  # type: ignore[no-untyped-call]
                except (KeyError, IndexError):
                    response = None
                return Answer(name, rdtype, (), _negative_ttl(response), "nxdomain")
            except (TimeoutError, dns.resolver.LifetimeTimeout):
                reason = f"no answer within {budget:.2f} s" + self._failures()
                continue
            except dns.resolver.NoNameservers as exc:
                reason = _no_nameservers_reason(exc)
                continue
            except dns.exception.DNSException as exc:
                self.stats.errors += 1
                raise DNSError(f"{rdtype} lookup for {name} failed: {exc}", name=name) from exc
            return _answer(name, rdtype, answer)
        self.stats.errors += 1
        raise DNSTemporaryError(
            f"{rdtype} lookup for {name} failed ({reason}; asked {self.describe()}): "
            "try again later",
            name=name,
        )

    def _failures(self) -> str:
        """What the encrypted nameservers of this round failed with, if anything."""
        failures = [
            f"{describe(ns)}: {ns.last_error}"
            for ns in self.nameservers
            if isinstance(ns, _RemembersFailure) and ns.last_error is not None
        ]
        return "; last errors: " + "; ".join(failures) if failures else ""


def _no_nameservers_reason(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    # dnspython reports (server, tcp, port, exception or rcode text, response).
    parts = [f"{err[0]} ({'TCP' if err[1] else 'UDP'}): {err[3]}" for err in errors]
    return "; ".join(parts) or "all nameservers failed"


def _answer(name: str, rdtype: str, answer: dns.resolver.Answer) -> Answer:
    rrset: dns.rrset.RRset | None = answer.rrset
    if rrset is None:
        return Answer(name, rdtype, (), _negative_ttl(answer.response), "nodata")
    ttl = float(answer.chaining_result.minimum_ttl)  # the smallest TTL of the CNAME chain
    if rdtype == "MX":
        mx = dedupe_mx(
            MXRecord(
                int(rr.preference),
                "." if rr.exchange == dns.name.root else rr.exchange.to_text(True).lower(),
            )
            for rr in rrset
        )
        if not mx:  # only "." targets: keep one so the cache remembers the null MX
            return Answer(name, rdtype, (MXRecord(0, "."),), ttl)
        return Answer(name, rdtype, tuple(mx), ttl)
    # Keep the server's order (it may rotate it for load spreading), without repeats.
    return Answer(name, rdtype, tuple(dict.fromkeys(str(rr.address) for rr in rrset)), ttl)
