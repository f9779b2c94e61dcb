"""A small authoritative DNS server for tests and benchmarks, with fault injection.

It runs in the caller's event loop on a loopback address (UDP and TCP on one
port, or DNS-over-TLS), serves one zone from memory, counts every query it
receives, and can delay, drop, SERVFAIL or truncate chosen queries:

    async with FakeDNSServer() as server:
        server.add("example.test", "MX", "10 mx1.example.test")
        server.add("mx1.example.test", "A", "127.0.0.2")
        server.fault("example.test", "MX", delay=0.03)
        resolver = Resolver(nameservers=[server.address])

Built on dnspython's message classes (no hand-written wire format).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import struct
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from mxpress.errors import ConfigError


@dataclass(slots=True)
class Fault:
    """What to do to matching queries; `times` = how many more (None: forever)."""

    name: str | None
    rdtype: str | None
    delay: float = 0.0
    rcode: str | None = None  # e.g. "SERVFAIL", "REFUSED"
    drop: bool = False  # never answer: the client times out
    truncate: bool = False  # UDP answers carry TC and no records: the client retries on TCP
    times: int | None = None

    def matches(self, name: str, rdtype: str) -> bool:
        return (self.name is None or self.name == name) and (
            self.rdtype is None or self.rdtype == rdtype
        )


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class FakeDNSServer:
    """In-memory zone `origin` served on `host`:`port` (0 = a free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        origin: str = "test",
        default_ttl: int = 300,
        soa_minimum: int = 60,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"FakeDNSServer binds loopback addresses only, not {host!r}")
        self.host = host
        self.port = port
        self.origin = _key(origin)
        self.default_ttl = default_ttl
        self.soa_minimum = soa_minimum
        self.tls = tls
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self.faults: list[Fault] = []
        self.queries: Counter[tuple[str, str]] = Counter()
        self.transports: Counter[str] = Counter()
        self.errors: list[Exception] = []  # exceptions raised while answering
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- zone and faults -------------------------------------------------------

    @property
    def address(self) -> str:
        """The nameserver spec for `Resolver(nameservers=[...])`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls://' if self.tls else ''}{host}:{self.port}"

    def add(self, name: str, rdtype: str, *rdatas: str, ttl: int | None = None) -> None:
        """Set the records of (name, rdtype), replacing what was there."""
        self.records[(_key(name), rdtype.upper())] = (
            self.default_ttl if ttl is None else ttl,
            list(rdatas),
        )

    def set_ttl(self, name: str, rdtype: str, ttl: int) -> None:
        key = (_key(name), rdtype.upper())
        self.records[key] = (ttl, self.records[key][1])

    def remove(self, name: str, rdtype: str | None = None) -> None:
        for key in [k for k in self.records if k[0] == _key(name)]:
            if rdtype is None or key[1] == rdtype.upper():
                del self.records[key]

    def fault(
        self,
        name: str | None = None,
        rdtype: str | None = None,
        *,
        delay: float = 0.0,
        rcode: str | None = None,
        drop: bool = False,
        truncate: bool = False,
        times: int | None = None,
    ) -> Fault:
        """Inject a fault into queries for (name, rdtype); None matches any."""
        rule = Fault(
            None if name is None else _key(name),
            None if rdtype is None else rdtype.upper(),
            delay,
            rcode,
            drop,
            truncate,
            times,
        )
        self.faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        self.faults.clear()

    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """Queries received (UDP and TCP) for (name, rdtype); None matches any."""
        return sum(
            n
            for (qn, qt), n in self.queries.items()
            if (name is None or qn == _key(name)) and (rdtype is None or qt == rdtype.upper())
        )

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> FakeDNSServer:
        loop = asyncio.get_running_loop()
        wanted = self.port
        # With port 0 the UDP port is picked first and TCP must then get the same number,
        # which may be busy (e.g. an outgoing connection's ephemeral port): pick again.
        for attempt in range(20):
            if self.tls is None:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UDP(self), local_addr=(self.host, wanted)
                )
                self._udp = transport
                self.port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, self.host, self.port, ssl=self.tls
                )
            except OSError:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                if wanted or attempt == 19:
                    raise
                continue
            break
        assert self._tcp is not None
        self.port = self._tcp.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            if hasattr(self._tcp, "close_clients"):
                self._tcp.close_clients()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FakeDNSServer:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- serving -------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                wire = await reader.readexactly(size)
                try:
                    reply = await self._reply(wire, "tcp")
                except Exception as exc:
                    self.errors.append(exc)
                    raise
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _udp_reply(self, wire: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = await self._reply(wire, "udp")
        except Exception as exc:  # a bug in a test zone must show, not hang the client
            self.errors.append(exc)
            raise
        if reply is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, addr)

    async def _reply(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if len(query.question) != 1:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        self.transports[transport] += 1
        fault = self._fault_for(name, rdtype)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.drop:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if fault is not None and fault.rcode:
            response.set_rcode(dns.rcode.from_text(fault.rcode))
        elif fault is not None and fault.truncate and transport == "udp":
            response.flags |= dns.flags.TC
        else:
            self._answer(response, name, rdtype)
        limit = 65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0 else 0)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:  # too large for UDP: say so, the client retries on TCP
            small = dns.message.make_response(query)
            small.flags |= dns.flags.AA | dns.flags.TC
            return small.to_wire()

    def _fault_for(self, name: str, rdtype: str) -> Fault | None:
        for rule in self.faults:
            if rule.matches(name, rdtype):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.faults.remove(rule)
                return rule
        return None

    def _answer(self, response: dns.message.Message, name: str, rdtype: str) -> None:
        for _ in range(8):  # follow CNAMEs inside the zone, as an authoritative server does
            found = self.records.get((name, rdtype))
            if found is not None:
                response.answer.append(self._rrset(name, rdtype, found))
                return
            cname = self.records.get((name, "CNAME"))
            if cname is None:
                break
            response.answer.append(self._rrset(name, "CNAME", cname))
            name = _key(cname[1][0])
        exists = any(n == name or n.endswith("." + name) for n, _ in self.records)
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = f"ns.{self.origin}. hostmaster.{self.origin}. 1 3600 600 86400 {self.soa_minimum}"
        response.authority.append(
            dns.rrset.from_text(self.origin + ".", self.default_ttl, "IN", "SOA", soa)
        )

    def _rrset(self, name: str, rdtype: str, found: tuple[int, list[str]]) -> dns.rrset.RRset:
        ttl, rdatas = found
        return dns.rrset.from_text_list(
            name + ".",
            ttl,
            dns.rdataclass.IN,
            rdtype,
            rdatas,
            origin=dns.name.root,
            relativize=False,
        )


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDNSServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        self.server._spawn(self.server._udp_reply(data, (host, port)))
