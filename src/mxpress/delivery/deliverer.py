"""Deliver one message to its recipients: per domain, try the servers in order.

- Setup failures (connect, TLS, a refusal at greeting or EHLO, a host in backoff) move on
  to the next server of the domain.
- A session that breaks before any body was written is retried once on another session
  of the same server (nothing can have been delivered); after a body went out the
  recipients are deferred, since a retry could deliver twice.
- Replies decide per recipient: 2xx delivered, 4xx deferred, 5xx bounced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from mxpress.delivery.batcher import Batcher
from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.delivery.router import Candidate, Router, group_by_domain
from mxpress.errors import (
    DeliveryError,
    DNSError,
    LocalProtocolError,
    MxpressError,
)
from mxpress.pool import Pool
from mxpress.protocol.client import Outgoing, TransactionResult
from mxpress.protocol.replies import Reply

Clock = Callable[[], float]


def outcome_of(reply: Reply | None) -> Outcome:
    if reply is None or reply.code < 400:
        return Outcome.DEFERRED if reply is None else Outcome.DELIVERED
    return Outcome.DEFERRED if reply.code < 500 else Outcome.BOUNCED


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
        result = SendResult(outgoing.sender)
        if self.router.relay is not None:
            groups = {"": list(outgoing.recipients)}
        else:
            try:
                groups = group_by_domain(outgoing.recipients)
            except MxpressError as exc:
                for rcpt in outgoing.recipients:
                    result.recipients[rcpt] = RecipientResult(
                        rcpt, Outcome.BOUNCED, reason=str(exc)
                    )
                return result
        if len(groups) == 1:
            ((domain, rcpts),) = groups.items()
            await self._deliver_domain(domain, rcpts, outgoing, result)
        else:
            await asyncio.gather(
                *(self._deliver_domain(d, r, outgoing, result) for d, r in groups.items())
            )
        return result

    async def _deliver_domain(
        self, domain: str, rcpts: list[str], outgoing: Outgoing, result: SendResult
    ) -> None:
        start = self._clock()
        try:
            candidates = await self.router.candidates(domain)
        except DNSError as exc:
            outcome = Outcome.DEFERRED if exc.is_transient else Outcome.BOUNCED
            for rcpt in rcpts:
                result.recipients[rcpt] = RecipientResult(rcpt, outcome, reason=str(exc))
            return
        finally:
            if domain:
                result.add_timings({"dns": self._clock() - start})
        message = Outgoing(
            outgoing.sender, rcpts, outgoing.data, outgoing.ret, outgoing.envid, outgoing.notify
        )
        errors: list[str] = []
        for candidate in candidates:
            done = await self._try_server(candidate, message, result, errors)
            if done:
                return
        reason = "; ".join(errors[-3:]) or "no server could be reached"
        for rcpt in rcpts:
            result.recipients[rcpt] = RecipientResult(
                rcpt, Outcome.DEFERRED, reason=f"all servers failed: {reason}"
            )

    async def _try_server(
        self, candidate: Candidate, message: Outgoing, result: SendResult, errors: list[str]
    ) -> bool:
        """True when this server decided every recipient; False to try the next server."""
        name = candidate.mx or candidate.options.host
        for attempt in range(2):
            delivery = await self._batcher.submit(candidate.options, message)
            error = delivery.error
            if error is None:
                assert delivery.result is not None
                result.add_timings(delivery.timings)
                if delivery.new_session:
                    result.new_sessions += 1
                else:
                    result.reused_sessions += 1
                self._record(delivery.result, delivery.host, message.recipients, result)
                return True
            errors.append(f"{name}: {error}")
            if not delivery.in_session:
                return False  # no session (setup failed, backoff, pool full): next server
            # The session broke mid-transaction (421, disconnect, timeout).
            if delivery.body_sent or attempt:
                self._defer_all(message.recipients, result, error, name)
                return True
            # Nothing can have been delivered: once more, on another session.
        return False

    def _record(
        self, tx: TransactionResult, host: str, rcpts: Sequence[str], result: SendResult
    ) -> None:
        result.add_timings(tx.timings)
        error = tx.error
        for rcpt in rcpts:
            reply = tx.reply_for(rcpt)
            if error is not None and not isinstance(error, DeliveryError):
                # Refused before sending (bad address, no SMTPUTF8): sending again won't help.
                outcome = (
                    Outcome.BOUNCED if isinstance(error, LocalProtocolError) else (Outcome.DEFERRED)
                )
            elif reply is None and error is not None:
                outcome = Outcome.DEFERRED if error.is_transient else Outcome.BOUNCED
            else:
                outcome = outcome_of(reply)
                if outcome is Outcome.DELIVERED and not tx.ok:
                    outcome = Outcome.DEFERRED  # accepted at RCPT, but the message was not
            reason = "" if outcome is Outcome.DELIVERED else str(reply or error)
            result.recipients[rcpt] = RecipientResult(rcpt, outcome, reply, host, reason)

    @staticmethod
    def _defer_all(rcpts: Sequence[str], result: SendResult, exc: MxpressError, host: str) -> None:
        for rcpt in rcpts:
            result.recipients[rcpt] = RecipientResult(
                rcpt, Outcome.DEFERRED, exc.reply, host, reason=str(exc)
            )
