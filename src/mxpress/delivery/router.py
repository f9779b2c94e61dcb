"""Routing: which servers may take mail for a set of recipients.

Relay mode sends everything to one smarthost. Direct mode groups recipients by domain
and resolves each domain's MX hosts (through the shared DNS cache) into an ordered list
of addresses to try.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import unquote, urlsplit

from mxpress.client.session import SessionOptions, TLSMode
from mxpress.client.timeouts import Timeouts
from mxpress.dns.mx import fast_normalize, normalize_domain
from mxpress.dns.resolver import Resolver
from mxpress.errors import ConfigError, DNSError

_SCHEMES = {
    "smtp": (TLSMode.OPPORTUNISTIC, 25),
    "smtp+starttls": (TLSMode.REQUIRED, 587),
    "smtps": (TLSMode.IMPLICIT, 465),
    "smtp+plain": (TLSMode.NONE, 25),  # never STARTTLS: a trusted local relay
}


def relay_scheme(mode: TLSMode) -> str:
    """The relay URL scheme that means `mode` (the inverse of what parse_relay reads)."""
    return next(scheme for scheme, (tls, _) in _SCHEMES.items() if tls is mode)


def parse_relay(url: str, *, base: SessionOptions) -> SessionOptions:
    """`smtp://user:pass@host:port` (STARTTLS when offered), `smtp+starttls://...` (TLS
    required), `smtps://...` (implicit TLS), `smtp+plain://...` (never TLS)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"relay URL {url!r} is malformed: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            "relay URL must start with smtp://, smtp+starttls://, smtps:// or smtp+plain://; "
            f"got {url!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"relay URL {url!r} has no host")
    if (parts.path not in ("", "/")) or parts.query or parts.fragment:
        raise ConfigError(f"relay URL {url!r} must not have a path, query or fragment")
    tls, default_port = _SCHEMES[parts.scheme]
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        raise ConfigError("relay URL has a user but no password (smtp://user:password@host)")
    return replace(
        base,
        host=parts.hostname,
        port=port or default_port,
        tls=tls,
        username=username,
        password=password,
    )


def domain_of(address: str) -> str:
    """The normalised (lower-case, IDNA) domain of an address, for grouping."""
    domain = address.rpartition("@")[2]
    if not domain:
        raise ConfigError(f"recipient {address!r} has no domain")
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # an address literal routes to itself
    return fast_normalize(domain) or normalize_domain(domain)  # once per message or more


def group_by_domain(recipients: Iterable[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rcpt in recipients:
        groups.setdefault(domain_of(rcpt), []).append(rcpt)
    return groups


@dataclass(frozen=True, slots=True)
class Candidate:
    """One server to try: session options and the MX name it came from."""

    options: SessionOptions
    mx: str  # MX host name ("" for a relay or an address literal)
    preference: int = 0
    dns_cache: str = ""  # how the MX answer came: "hit", "miss" or "stale" ("": no DNS)
    dns_address_seconds: float = 0.0  # of the lookup, the time spent on A/AAAA


class Router:
    """Turns a domain into the ordered servers to try."""

    def __init__(
        self,
        *,
        relay: SessionOptions | None,
        resolver: Resolver | None,
        base: SessionOptions,
    ) -> None:
        if relay is None and resolver is None:
            raise ConfigError("direct delivery needs a resolver (or give a relay)")
        self.relay = relay
        self.resolver = resolver
        self._base = base

    async def candidates(self, domain: str) -> list[Candidate]:
        """Servers for `domain`, in the order to try them. Raises DNSError subclasses."""
        if self.relay is not None:
            return [Candidate(self.relay, "")]
        assert self.resolver is not None
        if domain.startswith("["):
            literal = domain[1:-1].removeprefix("IPv6:")
            return [Candidate(replace(self._base, host=literal), "")]
        route = await self.resolver.mx(domain)
        cache = "stale" if route.stale else "hit" if route.from_cache else "miss"
        out: list[Candidate] = []
        for host in route.hosts:
            for address in host.addresses:
                out.append(
                    Candidate(
                        replace(self._base, host=address, server_hostname=host.name),
                        host.name,
                        host.preference,
                        cache,
                        route.address_seconds,
                    )
                )
        if not out:
            reasons = "; ".join(f"{h.name}: {h.error}" for h in route.hosts if h.error)
            raise DNSError(
                f"no MX host of {domain} has an address ({reasons or 'none resolved'})",
                name=domain,
            )
        return out


def base_options(
    *,
    port: int = 25,
    tls: str | TLSMode = TLSMode.OPPORTUNISTIC,
    verify: bool = True,
    cafile: str | None = None,
    local_hostname: str | None = None,
    source_address: str | None = None,
    timeouts: Timeouts | None = None,
    allow_plaintext_auth: bool = False,
) -> SessionOptions:
    return SessionOptions(
        host="",
        port=port,
        tls=TLSMode.parse(tls),
        verify=verify,
        cafile=cafile,
        local_hostname=local_hostname,
        source_address=source_address,
        timeouts=timeouts or Timeouts(),
        allow_plaintext_auth=allow_plaintext_auth,
    )
