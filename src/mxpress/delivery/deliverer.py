"""Deliver messages to their recipients: per domain, try the servers in order.

- Messages are split per recipient domain (in relay mode there is one "domain"); all the
  parts for one domain go to the batcher together, so they share pipelined flights.
- Setup failures (connect, TLS, a refusal at greeting or EHLO, a host in backoff) move
  the parts on to the domain's next server.
- A session that breaks before a part's body was written is retried once (nothing can
  have been delivered); after its body went out the part is deferred, since a retry
  could deliver twice.
- Replies decide per recipient: 2xx delivered, 4xx deferred, 5xx bounced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mxpress.client.session import SessionOptions
from mxpress.delivery.batcher import Batcher, Delivery
from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.delivery.router import Candidate, Router, domain_of
from mxpress.errors import DeliveryError, DNSError, LocalProtocolError, MxpressError
from mxpress.pool import Pool
from mxpress.protocol.client import Outgoing
from mxpress.protocol.replies import Reply

Clock = Callable[[], float]


def outcome_of(reply: Reply | None) -> Outcome:
    if reply is None or reply.code < 400:
        return Outcome.DEFERRED if reply is None else Outcome.DELIVERED
    return Outcome.DEFERRED if reply.code < 500 else Outcome.BOUNCED


@dataclass(slots=True)
class _Part:
    """The recipients of one message in one domain."""

    message: Outgoing
    result: SendResult
    # Failures met on the way ("host: reason"), for the final deferral's reason; None
    # until the first (most parts never fail, and each list is one more object to track).
    errors: list[str] | None = None
    retried: bool = False


class Deliverer:
    """Routes and sends messages through a shared pool."""

    def __init__(self, router: Router, pool: Pool, *, clock: Clock = time.perf_counter) -> None:
        self.router = router
        self.pool = pool
        self._clock = clock
        self._batcher = Batcher(pool, clock=clock)

    async def close(self) -> None:
        await self._batcher.close()

    async def deliver(self, outgoing: Outgoing) -> SendResult:
        return (await self.deliver_many([outgoing]))[0]

    async def deliver_many(self, outgoings: Sequence[Outgoing]) -> list[SendResult]:
        results = [SendResult(o.sender) for o in outgoings]
        by_domain: dict[str, list[_Part]] = {}
        relay = self.router.relay is not None
        for outgoing, result in zip(outgoings, results, strict=True):
            groups: dict[str, list[str]] = {}
            for rcpt in outgoing.recipients:
                try:
                    domain = "" if relay else domain_of(rcpt)
                except MxpressError as exc:
                    result.recipients[rcpt] = RecipientResult(
                        rcpt, Outcome.BOUNCED, reason=str(exc)
                    )
                    continue
                groups.setdefault(domain, []).append(rcpt)
            for domain, rcpts in groups.items():
                message = (
                    outgoing
                    if len(groups) == 1 and len(rcpts) == len(outgoing.recipients)
                    else Outgoing(
                        outgoing.sender,
                        rcpts,
                        outgoing.data,
                        outgoing.ret,
                        outgoing.envid,
                        outgoing.notify,
                    )
                )
                by_domain.setdefault(domain, []).append(_Part(message, result))
        if len(by_domain) == 1:
            ((domain, parts),) = by_domain.items()
            await self._deliver_domain(domain, parts)
        elif by_domain:
            await asyncio.gather(*(self._deliver_domain(d, p) for d, p in by_domain.items()))
        return results

    async def _deliver_domain(self, domain: str, parts: list[_Part]) -> None:
        start = self._clock()
        candidates: list[Candidate] = []
        try:
            candidates = await self.router.candidates(domain)
        except DNSError as exc:
            outcome = Outcome.DEFERRED if exc.is_transient else Outcome.BOUNCED
            for part in parts:
                for rcpt in part.message.recipients:
                    part.result.recipients[rcpt] = RecipientResult(rcpt, outcome, reason=str(exc))
            return
        finally:
            if domain:
                # Two phases: the MX answer, then the MX hosts' addresses (A/AAAA).
                elapsed = self._clock() - start
                address = min(elapsed, candidates[0].dns_address_seconds if candidates else 0.0)
                phases = {"dns_mx": elapsed - address, "dns_addr": address}
                for part in parts:
                    part.result.add_timings(phases)
        if candidates and candidates[0].dns_cache:
            for part in parts:
                part.result.dns[domain] = candidates[0].dns_cache
        pending = parts
        for candidate in candidates:
            pending = await self._on_server(
                candidate.mx or candidate.options.host, candidate.options, pending, candidate.mx
            )
            if not pending:
                return
        for part in pending:
            reason = "; ".join((part.errors or [])[-3:]) or "no server could be reached"
            for rcpt in part.message.recipients:
                part.result.recipients[rcpt] = RecipientResult(
                    rcpt, Outcome.DEFERRED, reason=f"all servers failed: {reason}"
                )

    async def _on_server(
        self, name: str, options: SessionOptions, parts: list[_Part], mx: str = ""
    ) -> list[_Part]:
        """Send the parts to one server; return those that must try the next server."""
        moved: list[_Part] = []
        todo = parts
        while todo:
            deliveries = await self._batcher.submit(options, [p.message for p in todo])
            retry: list[_Part] = []
            for part, delivery in zip(todo, deliveries, strict=True):
                error = delivery.error
                if error is None:
                    assert delivery.result is not None
                    self._record(part, delivery, mx)
                    continue
                part.errors = [*(part.errors or []), f"{name}: {error}"]
                if not delivery.in_session:
                    moved.append(part)  # no session here (setup failed, backoff, pool full)
                elif delivery.body_sent or part.retried:
                    self._defer(part, error, delivery.host or name, delivery.ip, mx)
                else:
                    part.retried = True  # the session broke before the body: nothing delivered
                    retry.append(part)
            todo = retry
        return moved

    def _record(self, part: _Part, delivery: Delivery, mx: str = "") -> None:
        tx = delivery.result
        assert tx is not None
        result, host = part.result, delivery.host
        timings = result.timings
        timings["queue"] = timings.get("queue", 0.0) + delivery.queued
        if delivery.setup:
            result.add_timings(delivery.setup)
        result.add_timings(tx.timings)
        if delivery.new_session:
            result.new_sessions += 1
            if delivery.tls_resumed is not None:
                if delivery.tls_resumed:
                    result.tls_resumed += 1
                else:
                    result.tls_full += 1
        else:
            result.reused_sessions += 1
        error = tx.error
        for rcpt in part.message.recipients:
            reply = tx.reply_for(rcpt)
            if error is not None and not isinstance(error, DeliveryError):
                # Refused before sending (bad address, no SMTPUTF8): sending again won't help.
                local = isinstance(error, LocalProtocolError)
                outcome = Outcome.BOUNCED if local else Outcome.DEFERRED
            elif reply is None and error is not None:
                outcome = Outcome.DEFERRED if error.is_transient else Outcome.BOUNCED
            else:
                outcome = outcome_of(reply)
                if outcome is Outcome.DELIVERED and not tx.ok:
                    outcome = Outcome.DEFERRED  # accepted at RCPT, but the message was not
            reason = "" if outcome is Outcome.DELIVERED else str(reply or error)
            result.recipients[rcpt] = RecipientResult(
                rcpt, outcome, reply, host, reason, delivery.ip, mx or None
            )

    @staticmethod
    def _defer(
        part: _Part, exc: MxpressError, host: str, ip: str | None = None, mx: str = ""
    ) -> None:
        for rcpt in part.message.recipients:
            part.result.recipients[rcpt] = RecipientResult(
                rcpt, Outcome.DEFERRED, exc.reply, host, str(exc), ip, mx or None
            )
