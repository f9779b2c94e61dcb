"""`Mailer`: send to any domain, directly (MX) or through a relay, over pooled sessions.

It is to mail what an HTTP client with a connection pool is to the web: build one, share
it, close it. Everything it uses (resolver, DNS cache, pool, TLS session store) is built
here or passed in; nothing is global.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from types import TracebackType

from mxpress.client.session import TLSMode
from mxpress.client.timeouts import Timeouts
from mxpress.delivery.deliverer import Deliverer
from mxpress.delivery.result import SendResult
from mxpress.delivery.router import Router, base_options, parse_relay
from mxpress.dns.resolver import Resolver
from mxpress.errors import ConfigError, MxpressError
from mxpress.message import envelope_of
from mxpress.pool import Pool
from mxpress.protocol.client import Outgoing
from mxpress.transport.tls import TLSSessionStore

Message = EmailMessage | bytes


class Mailer:
    """Sends messages; reuses sessions and DNS answers across sends.

    - `relay`: `smtp://user:pass@host:port`, `smtp+starttls://…` (TLS required) or
      `smtps://…` (implicit TLS). Without it, mail goes straight to each domain's MX hosts
      on `port` (25 in the world).
    - `tls`: for direct delivery, `"opportunistic"` (default), `"required"` or `"none"`.
    - `verify`: check certificates. Default: on for a relay; off for opportunistic MX
      delivery (encryption without authentication, RFC 7435, as MTAs do), on when
      `tls="required"`.
    """

    def __init__(
        self,
        relay: str | None = None,
        *,
        max_connections: int = 100,
        max_per_destination: int = 10,
        resolver: Resolver | None = None,
        nameservers: Sequence[str] | None = None,
        tls: str | TLSMode = TLSMode.OPPORTUNISTIC,
        verify: bool | None = None,
        cafile: str | None = None,
        port: int = 25,
        timeout: float | Timeouts | None = None,
        local_hostname: str | None = None,
        source_address: str | None = None,
        pool: Pool | None = None,
        pool_timeout: float = 30.0,
        idle_timeout: float = 30.0,
    ) -> None:
        mode = TLSMode.parse(tls)
        if verify is None:
            verify = relay is not None or mode is TLSMode.REQUIRED
        if not 0 < port < 65536:
            raise ConfigError(f"port must be 1-65535, got {port!r}")
        base = base_options(
            port=port,
            tls=mode,
            verify=verify,
            cafile=cafile,
            local_hostname=local_hostname,
            source_address=source_address,
            timeouts=Timeouts.coerce(timeout),
        )
        relay_options = parse_relay(relay, base=base) if relay is not None else None
        if relay_options is None and resolver is None:
            resolver = Resolver(nameservers)
        self.resolver = resolver
        self.tls_sessions = TLSSessionStore()
        self._own_pool = pool is None
        self.pool = pool or Pool(
            max_connections=max_connections,
            max_per_destination=max_per_destination,
            pool_timeout=pool_timeout,
            idle_timeout=idle_timeout,
            tls_sessions=self.tls_sessions,
        )
        self.router = Router(relay=relay_options, resolver=resolver, base=base)
        self._deliverer = Deliverer(self.router, self.pool)

    async def send(
        self,
        message: Message,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
    ) -> SendResult:
        """Send one message; the envelope comes from its headers unless given."""
        from_, rcpts, data = envelope_of(message, sender=sender, recipients=recipients)
        return await self._deliverer.deliver(Outgoing(from_, rcpts, data))

    async def deliver(self, outgoings: Sequence[Outgoing]) -> list[SendResult]:
        """Send messages whose envelope is already known (the relay's queue uses this)."""
        return await self._deliverer.deliver_many(outgoings)

    async def send_many(
        self, messages: Iterable[Message], *, concurrency: int = 100
    ) -> list[SendResult]:
        """Send many messages, at most `concurrency` in flight; results in input order.

        Messages go in chunks, each delivered as a whole (one envelope pass, one batch
        per destination), with a few chunks in flight so no chunk boundary idles a session.
        """
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency!r}")
        items = list(messages)
        results: list[SendResult | None] = [None] * len(items)
        # A chunk finishes when its slowest message does. Through a relay every message
        # goes to one server, so two big chunks amortise the per-chunk work best
        # (measured: ~10% more msgs/s than four); direct delivery mixes destinations, so
        # four smaller chunks keep one slow domain from holding half the window.
        lanes = min(2 if self.router.relay is not None else 4, concurrency)
        size = max(1, concurrency // lanes)
        chunks = iter(range(0, len(items), size))

        async def lane() -> None:
            for start in chunks:  # the shared iterator hands each chunk to one lane
                await self._send_chunk(items, start, min(start + size, len(items)), results)

        await asyncio.gather(*(lane() for _ in range(lanes)))
        return [r for r in results if r is not None]

    async def _send_chunk(
        self, items: list[Message], start: int, end: int, results: list[SendResult | None]
    ) -> None:
        ready: list[tuple[int, Outgoing]] = []
        for i in range(start, end):
            try:
                sender, rcpts, data = envelope_of(items[i])
            except MxpressError as exc:  # one bad message must not stop the rest
                results[i] = SendResult("", error=exc)
                continue
            ready.append((i, Outgoing(sender, rcpts, data)))
        sent = await self._deliverer.deliver_many([o for _, o in ready])
        for (i, _), result in zip(ready, sent, strict=True):
            results[i] = result

    async def close(self) -> None:
        await self._deliverer.close()
        if self._own_pool:
            await self.pool.close()

    async def __aenter__(self) -> Mailer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        mode = f"relay {self.router.relay.host}" if self.router.relay else "direct"
        return f"<Mailer {mode} {self.pool!r}>"
