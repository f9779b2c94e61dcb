"""`Resolver`: MX routes and host addresses, through the shared `DNSCache`.

A warm `mx()` is synchronous work only (dictionary lookups, a shuffle of equal
preferences): no task, no await on the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import cast

from mxpress.dns.cache import Answer, Clock, DNSCache, DNSStats, Entry
from mxpress.dns.mx import (
    MXHost,
    MXRecord,
    MXRoute,
    address_literal,
    fast_normalize,
    is_null_mx,
    normalize_domain,
    shuffle_ties,
)
from mxpress.dns.upstream import NameserverSpec, TLSVerify, Upstream
from mxpress.errors import ConfigError, DNSError, DNSTemporaryError, NoMX, NullMX, NXDomain


@dataclass(slots=True)
class _Host:
    """The address lookups of one host, merged."""

    addresses: list[str]
    expires: float
    from_cache: bool
    stale: bool
    error: DNSError | None


class Resolver:
    """MX and address resolution with caching::

        resolver = Resolver(nameservers=["127.0.0.1:5353"], timeout=2.0)
        route = await resolver.mx("example.com")

    `nameservers` default to the system's. `timeout` is per try, `lifetime` for
    the whole lookup, `attempts` the number of rounds over the nameservers.
    `cache` is shared between resolvers when given; otherwise the resolver makes
    its own (with `clock`, default `time.monotonic`).
    """

    def __init__(
        self,
        nameservers: Sequence[NameserverSpec] | None = None,
        *,
        timeout: float = 2.0,
        lifetime: float = 6.0,
        attempts: int = 2,
        tcp: bool = False,
        tls_verify: TLSVerify = True,
        ipv4: bool = True,
        ipv6: bool = True,
        cache: DNSCache | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not (ipv4 or ipv6):
            raise ConfigError("Resolver needs at least one address family: ipv4 or ipv6")
        if cache is not None and clock is not None and cache.clock is not clock:
            raise ConfigError("pass the clock to the shared DNSCache, not to the Resolver")
        self.stats = DNSStats()
        self.upstream = Upstream(
            nameservers,
            timeout=timeout,
            lifetime=lifetime,
            attempts=attempts,
            tcp=tcp,
            tls_verify=tls_verify,
            stats=self.stats,
        )
        if cache is None:
            cache = DNSCache() if clock is None else DNSCache(clock=clock)
        self.cache = cache
        self._clock = self.cache.clock
        self._rng = rng if rng is not None else random.Random()
        # AAAA first: the transport tries IPv6 first and falls back (happy eyeballs).
        self._families = tuple(t for t, on in (("AAAA", ipv6), ("A", ipv4)) if on)
        self._fetch = self.upstream.fetch
        self._pending: dict[str, asyncio.Task[MXRoute]] = {}  # routes being resolved

    @property
    def nameservers(self) -> str:
        return self.upstream.describe()

    # --- public API ------------------------------------------------------------

    async def mx(
        self, domain: str, *, raise_errors: bool = True, use_cache: bool = True
    ) -> MXRoute:
        """The delivery route for `domain`: MX hosts in order, each with its addresses.

        Raises `NXDomain`, `NullMX`, `NoMX` (permanent) or `DNSTemporaryError`.
        With `raise_errors=False` the error is returned in `route.error` instead.
        `use_cache=False` asks upstream for every record (and stores nothing).
        """
        try:
            literal = address_literal(domain)
            if literal is not None:
                host = MXHost(domain, 0, [literal], math.inf)
                return MXRoute(domain, [host], implicit=True, ttl=math.inf, expires=math.inf)
            name = self._name(domain)
            if not use_cache:
                return await self._resolve(name, False)
            return self._warm_route(name) or await self._join(name)
        except DNSError as exc:
            if raise_errors:
                raise
            return MXRoute(domain, [], null_mx=isinstance(exc, NullMX), error=exc)

    async def addresses(self, host: str, *, use_cache: bool = True) -> list[str]:
        """IPv6 and IPv4 addresses of `host` (an IP literal is returned as is)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        name = self._name(host)
        result = self._cached_host(name) if use_cache else None
        if result is None:
            result = await self._load_host(name, use_cache)
        if result.error is not None:
            raise result.error
        return result.addresses

    async def query(self, name: str, rdtype: str, *, use_cache: bool = True) -> Answer:
        """The cached answer for any (name, type); negative answers are returned, not raised."""
        entry, _ = await self._get(self._name(name), rdtype.upper(), use_cache)
        return entry.answer

    # --- internals ---------------------------------------------------------------

    def _name(self, domain: str) -> str:
        return fast_normalize(domain) or normalize_domain(domain)

    async def _get(self, name: str, rdtype: str, use_cache: bool) -> tuple[Entry, bool]:
        if not use_cache:
            answer = await self._fetch(name, rdtype)
            now = self._clock()
            return Entry(answer, now, now + answer.ttl, math.inf), False
        entry = self.cache.lookup(name, rdtype, self._fetch, self.stats)
        if entry is not None:
            return entry, True
        return await self.cache.load(name, rdtype, self._fetch, self.stats)

    def _warm_route(self, name: str) -> MXRoute | None:
        """The route from fresh cache entries only, or None. No await: the hot path."""
        entry = self.cache.lookup(name, "MX", self._fetch, self.stats)
        if entry is None:
            return None
        records, implicit = self._plan(name, entry)
        results = []
        for record in records:
            result = self._cached_host(record.exchange)
            if result is None:
                return None
            results.append(result)
        return self._finish(name, entry, True, records, implicit, results)

    async def _join(self, name: str) -> MXRoute:
        """Concurrent cold lookups of one domain share one resolution, each then
        getting its own copy and its own shuffle of equal preferences."""
        task = self._pending.get(name)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(self._resolve(name, True))
            self._pending[name] = task
            task.add_done_callback(partial(self._resolved, name))
        else:
            self.stats.joined += 1
        # shield: a cancelled caller must not cancel the resolution the others wait for.
        route = await asyncio.shield(task)
        hosts = [
            MXHost(h.name, h.preference, list(h.addresses), h.ttl, h.error) for h in route.hosts
        ]
        return replace(route, hosts=shuffle_ties(hosts, self._rng))

    def _resolved(self, name: str, task: asyncio.Task[MXRoute]) -> None:
        if self._pending.get(name) is task:
            del self._pending[name]
        if not task.cancelled():
            task.exception()  # retrieved: a resolution nobody awaits logs no warning

    async def _resolve(self, name: str, use_cache: bool) -> MXRoute:
        entry, from_cache = await self._get(name, "MX", use_cache)
        records, implicit = self._plan(name, entry)
        results: list[_Host | None] = [
            self._cached_host(r.exchange) if use_cache else None for r in records
        ]
        missing = [i for i, res in enumerate(results) if res is None]
        address_seconds = 0.0
        if missing:
            start = time.perf_counter()
            loaded = await asyncio.gather(
                *(self._load_host(records[i].exchange, use_cache) for i in missing)
            )
            address_seconds = time.perf_counter() - start
            for i, res in zip(missing, loaded, strict=True):
                results[i] = res
        route = self._finish(name, entry, from_cache, records, implicit, cast(list[_Host], results))
        route.address_seconds = address_seconds
        return route

    def _plan(self, name: str, entry: Entry) -> tuple[list[MXRecord], bool]:
        """The hosts to resolve, in delivery order, and whether the MX is implicit."""
        answer = entry.answer
        if answer.negative == "nxdomain":
            raise NXDomain(f"domain {name} does not exist (NXDOMAIN)", name=name)
        if answer.negative == "nodata":
            # RFC 5321 §5.1: no MX records, so the domain itself is the host.
            return [MXRecord(0, name)], True
        mx = cast(tuple[MXRecord, ...], answer.records)
        if is_null_mx(mx):
            raise NullMX(
                f"domain {name} publishes a null MX (RFC 7505): it accepts no mail", name=name
            )
        return shuffle_ties(list(mx), self._rng), False

    def _finish(
        self,
        name: str,
        entry: Entry,
        from_cache: bool,
        records: list[MXRecord],
        implicit: bool,
        results: list[_Host],
    ) -> MXRoute:
        now = self._clock()
        stale = entry.expires <= now
        expires = entry.expires
        hosts: list[MXHost] = []
        errors: list[DNSError] = []
        for record, res in zip(records, results, strict=True):
            expires = min(expires, res.expires)
            from_cache = from_cache and res.from_cache
            stale = stale or res.stale
            if res.error is not None:
                errors.append(res.error)
            hosts.append(
                MXHost(
                    record.exchange,
                    record.preference,
                    res.addresses,
                    max(0.0, res.expires - now),
                    None if res.error is None else str(res.error),
                )
            )
        if not any(h.addresses for h in hosts):
            raise self._no_route(name, implicit, errors)
        return MXRoute(
            name,
            hosts,
            implicit=implicit,
            ttl=max(0.0, expires - now),
            expires=expires,
            from_cache=from_cache,
            stale=stale,
        )

    def _no_route(self, name: str, implicit: bool, errors: list[DNSError]) -> DNSError:
        temporary = [e for e in errors if e.is_transient]
        if temporary:
            return DNSTemporaryError(
                f"no address for any mail host of {name}: {temporary[0].message}", name=name
            )
        if implicit:
            if any(isinstance(e, NXDomain) for e in errors):
                return NXDomain(f"domain {name} does not exist (NXDOMAIN)", name=name)
            return NoMX(f"domain {name} has no MX and no A/AAAA records: no mail host", name=name)
        return NoMX(
            f"none of the MX hosts of {name} has an address: "
            + "; ".join(e.message for e in errors),
            name=name,
        )

    def _cached_host(self, host: str) -> _Host | None:
        """The host's addresses if every family is fresh in the cache, else None."""
        entries = []
        for rdtype in self._families:
            entry = self.cache.lookup(host, rdtype, self._fetch, self.stats)
            if entry is None:
                return None
            entries.append(entry)
        return self._merge(host, entries, [], True)

    async def _load_host(self, host: str, use_cache: bool) -> _Host:
        got = await asyncio.gather(
            *(self._get(host, rdtype, use_cache) for rdtype in self._families),
            return_exceptions=True,
        )
        entries: list[Entry] = []
        failures: list[DNSError] = []
        from_cache = True
        for item in got:
            if isinstance(item, DNSError):
                failures.append(item)
            elif isinstance(item, BaseException):
                raise item
            else:
                entries.append(item[0])
                from_cache = from_cache and item[1]
        return self._merge(host, entries, failures, from_cache)

    def _merge(
        self, host: str, entries: list[Entry], failures: list[DNSError], from_cache: bool
    ) -> _Host:
        now = self._clock()
        addresses: list[str] = []
        expires = math.inf
        stale = False
        nxdomain = False
        for entry in entries:
            answer = entry.answer
            expires = min(expires, entry.expires)
            stale = stale or entry.expires <= now
            if answer.negative == "nxdomain":
                nxdomain = True
            addresses.extend(cast(tuple[str, ...], answer.records))
        error: DNSError | None = None
        if not addresses:
            if failures:
                error = failures[0]
            elif nxdomain:
                error = NXDomain(f"host {host} does not exist (NXDOMAIN)", name=host)
            else:
                error = NoMX(f"host {host} has no A/AAAA records", name=host)
        if expires == math.inf:
            expires = now
        return _Host(addresses, expires, from_cache, stale, error)
