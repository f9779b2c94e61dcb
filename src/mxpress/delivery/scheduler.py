"""The relay's delivery loop: due messages from the queue → the Mailer → outcomes back.

- Pages due messages in (`lease_due`, a bounded batch at a time): the queue can hold
  millions, memory holds only what is being delivered.
- At most `concurrency` messages in flight, and at most `per_domain` for one recipient
  domain. A message for a saturated domain waits, still leased, in that domain's ready
  queue (bounded: `ready_per_domain`, and `concurrency` in all) and starts the moment one
  of the domain's deliveries ends; only when that queue is full does it go back to the
  store ("parked") for about as long as the queue ahead of it takes to drain, judged by
  how fast the domain's deliveries have been ending (at most `park_seconds`). So a slow
  destination never holds up the others (a dead one fails fast anyway: connect backoff
  in the pool), and a burst for a fast one waits milliseconds, not seconds.
- Messages for one domain that are ready together (fresh mail stored in one group
  commit, a page of due messages) go out together: one Mailer call, one batch of
  pipelined transactions, one write for all their outcomes.
- Per recipient: delivered; deferred with the retry policy's next time; bounced on a 5xx
  or once the queue lifetime is over, with an RFC 3464 DSN to the sender (never to `<>`,
  never for a bounce). The DSN is queued before the outcome is recorded: a crash between
  the two may send a DSN twice, never zero times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mxpress.delivery.bounce import FailedRecipient, build_dsn, should_bounce
from mxpress.delivery.pace import DomainPace
from mxpress.delivery.result import SendResult
from mxpress.delivery.router import domain_of
from mxpress.delivery.verdicts import (
    attempt_outcomes,
    bounced_recipients,
    delayed_recipients,
    expiry_outcomes,
)
from mxpress.errors import MxpressError, QueueError
from mxpress.mailer import Mailer
from mxpress.protocol.client import Outgoing
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.store import (
    AttemptOutcome,
    Lease,
    NewMessage,
    QueuedMessage,
    QueueStore,
    RecipientState,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
_GROUP = 16  # most messages delivered (and recorded) together
# Called after each attempt with the message, the attempt's result and the outcomes.
Observer = Callable[[QueuedMessage, SendResult, Sequence[AttemptOutcome]], None]


@dataclass
class SchedulerStats:
    attempts: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    dsn_sent: int = 0  # bounces and delay warnings
    delay_warnings: int = 0
    parked: int = 0  # messages put back because their domain and its ready queue were full
    readied: int = 0  # messages that waited in a domain's ready queue for a free slot
    returned: int = 0  # ... and were given back unstarted, their lease half run out
    errors: int = 0
    expired: int = 0  # recipients bounced by the expiry sweep (no attempt due); in bounced too


class Scheduler:
    def __init__(
        self,
        store: QueueStore,
        mailer: Mailer,
        policy: RetryPolicy,
        *,
        hostname: str,
        concurrency: int = 500,
        per_domain: int = 100,
        lease_seconds: float = 600.0,
        poll_interval: float = 1.0,
        batch: int = 200,
        park_seconds: float = 5.0,
        ready_per_domain: int | None = None,
        expiry_interval: float = 60.0,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        self._store = store
        self._mailer = mailer
        self._policy = policy
        self._hostname = hostname
        self._concurrency = concurrency
        self._per_domain = per_domain
        self._lease_seconds = lease_seconds
        self._poll = poll_interval
        self._batch = batch
        self._park = park_seconds
        self._ready_limit = per_domain if ready_per_domain is None else ready_per_domain
        self._ready: dict[str, deque[Lease]] = {}
        self._ready_count = 0
        self._running = 0  # messages being delivered (concurrency counts these)
        # Room promised to fresh mail being stored (`reserve`), per domain, until its
        # lease is admitted; and the leases handed over by `take`, admitted together
        # once per loop turn.
        self._reserved: Counter[str] = Counter()
        self._reserved_total = 0
        self._taken: list[tuple[Lease, str | None]] = []
        self._taken_handle: asyncio.Handle | None = None
        self._pace = DomainPace(park_seconds, monotonic)
        self._expiry_interval = expiry_interval
        self._clock = clock
        self._observer = observer
        self._wake = asyncio.Event()
        # False once a lease_due pass found nothing more due and nothing was stored or
        # given back since: then a free slot needs no pass (fresh mail is leased as it
        # is stored), and the writer is spared a request per delivery.
        self._backlog = True
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_domain: Counter[str] = Counter()
        self._runner: asyncio.Task[None] | None = None
        self.stats = SchedulerStats()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    def wake(self) -> None:
        """New mail arrived (or was released): look for due messages now."""
        self._backlog = True
        self._wake.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Lease nothing more; let deliveries in flight finish (up to `grace`), then give
        the rest back to the queue: their leases are released, nothing is lost."""
        self._stopping = True
        self._wake.set()
        if self._taken_handle is not None:
            self._taken_handle.cancel()
            self._taken_handle = None
        taken = self._unreserve_taken()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        waiting = taken + [lease for ready in self._ready.values() for lease in ready]
        self._ready.clear()
        self._ready_count = 0
        for lease in waiting:  # never started: back to the queue, due as they were
            await self._store.release(lease)

    @property
    def in_flight(self) -> int:
        """Messages being delivered."""
        return self._running

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        next_expiry = 0.0
        while not self._stopping:
            self._wake.clear()
            leased = 0
            try:
                now = self._clock()
                if now >= next_expiry:
                    await self._expire(now)
                    next_expiry = now + self._expiry_interval
                room = self._concurrency - self._running
                if room > 0:
                    asked = min(room, self._batch)
                    self._backlog = False
                    leases = await self._store.lease_due(now, asked, self._lease_seconds)
                    leased = len(leases)
                    if leased == asked:
                        self._backlog = True  # a full page: there may be more
                    for lease, retry_at in self._admit(leases, now):
                        await self._store.release(lease, retry_at=retry_at)
            except MxpressError as exc:  # e.g. the store is briefly unavailable
                self._backlog = True
                self.stats.errors += 1
                logger.error("scheduler: %s", exc)
            if leased and self._running < self._concurrency:
                continue  # there may be more due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    def reserve(self, recipient: str) -> str | None:
        """Room for one fresh message to this recipient's domain: a slot or a place in
        its ready queue, held for it while it is stored. Returns the reservation, for
        `take` (or `unreserve`, if storing failed); None: no room now (store it plainly,
        it is leased when due). Without reservations every submission stored during one
        commit would see the same room, and the surplus would be parked."""
        try:
            domain = domain_of(recipient)
        except MxpressError:
            domain = ""
        if self._stopping or self._running + self._reserved_total >= self._concurrency:
            return None
        free = self._per_domain - self._by_domain[domain]
        if free + self._ready_places(domain) <= self._reserved[domain]:
            return None
        self._reserved[domain] += 1
        self._reserved_total += 1
        return domain

    def unreserve(self, reservation: str) -> None:
        self._reserved[reservation] -= 1
        self._reserved_total -= 1
        if not self._reserved[reservation]:
            del self._reserved[reservation]

    def _ready_places(self, domain: str) -> int:
        """Free places in the domain's ready queue (bounded per domain and in all)."""
        ready = len(self._ready.get(domain, ()))
        return max(0, min(self._ready_limit - ready, self._concurrency - self._ready_count))

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    async def take(self, lease: Lease, reservation: str | None = None) -> None:
        """Deliver a message leased by someone else (the relay leases fresh mail as it
        stores it, sparing a lease_due pass), with the room `reserve` held for it.
        Leases taken in one loop turn (one group commit's worth) start together."""
        if self._stopping:
            if reservation is not None:
                self.unreserve(reservation)
            await self._store.release(lease)
            return
        self._taken.append((lease, reservation))
        if self._taken_handle is None:
            self._taken_handle = asyncio.get_running_loop().call_soon(self._admit_taken)

    def _admit_taken(self) -> None:
        self._taken_handle = None
        taken = self._unreserve_taken()
        for lease, retry_at in self._admit(taken, self._clock()):
            self._release_later(lease, retry_at)

    def _unreserve_taken(self) -> list[Lease]:
        taken, self._taken = self._taken, []
        for _, reservation in taken:
            if reservation is not None:
                self.unreserve(reservation)
        return [lease for lease, _ in taken]

    def _admit(self, leases: Sequence[Lease], now: float) -> list[tuple[Lease, float]]:
        """Start what each domain has room for, as one group per domain; the rest wait in
        the domain's ready queue, or, past its bound, are returned with the time they
        should be parked until."""
        by_domain: dict[str, list[Lease]] = {}
        for lease in leases:
            by_domain.setdefault(_domain(lease.message), []).append(lease)
        parked = []
        for domain, group in by_domain.items():
            free = self._per_domain - self._by_domain[domain]
            if free > 0:
                self._start(group[:free], domain)
            for lease in group[max(free, 0) :]:
                if self._ready_places(domain):
                    self.stats.readied += 1
                    self._ready.setdefault(domain, deque()).append(lease)
                    self._ready_count += 1
                else:
                    self.stats.parked += 1
                    waiting = len(self._ready.get(domain, ())) + 1
                    parked.append((lease, now + self._pace.park_time(domain, waiting)))
        return parked

    def _start(self, leases: list[Lease], domain: str) -> None:
        loop = asyncio.get_running_loop()
        # A group frees its slots when its slowest message is through: small groups free
        # them sooner (and teach the domain's pace early in a burst).
        for first in range(0, len(leases), _GROUP):
            group = leases[first : first + _GROUP]
            count = len(group)
            self._by_domain[domain] += count
            self._running += count
            task = loop.create_task(self._deliver(group, domain))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _finished(self, domain: str, count: int) -> None:
        """`count` messages to `domain` are through with it: their slots are free."""
        self._running -= count
        self._by_domain[domain] -= count
        busy = self._by_domain[domain] > 0 or domain in self._ready
        self._pace.ended(domain, count, still_busy=busy)
        free = self._per_domain - self._by_domain[domain]
        if not self._by_domain[domain]:
            del self._by_domain[domain]
        ready = self._ready.get(domain)
        start: list[Lease] = []
        while ready and len(start) < free and not self._stopping:
            lease = ready.popleft()
            self._ready_count -= 1
            if not ready:
                del self._ready[domain]
            # A lease that waited most of its time away goes back rather than risk
            # running out mid-delivery (and being leased twice).
            if lease.expires_at - self._clock() > self._lease_seconds / 2:
                start.append(lease)
                continue
            self.stats.returned += 1
            self._release_later(lease)
        if start:
            self._start(start, domain)
        if self._backlog:
            self._wake.set()  # a slot is free for what is waiting in the store

    def _release_later(self, lease: Lease, retry_at: float | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._release(lease, retry_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, lease: Lease, retry_at: float | None = None) -> None:
        self._backlog = True  # due again, now or at retry_at
        try:
            await self._store.release(lease, retry_at=retry_at)
        except MxpressError as exc:  # the lease runs out by itself: delivered later
            self.stats.errors += 1
            logger.error("scheduler: could not give back %s: %s", lease.message.id, exc)
            return
        if retry_at is None and not self._stopping:
            self._wake.set()  # due now: a pass picks it up

    # -- one attempt ----------------------------------------------------------------------

    async def _deliver(self, leases: list[Lease], domain: str) -> None:
        """One attempt for each of a group of messages (one domain), sent together."""
        try:
            try:
                outgoing = []
                for lease in leases:
                    message = lease.message
                    assert message.data is not None, "a lease carries the message data"
                    rcpts = [r.recipient for r in message.recipients]
                    outgoing.append(Outgoing(message.sender, rcpts, message.data))
                results = await self._mailer.deliver(outgoing)
            finally:
                # The domain is done with them: recording the outcomes needs no slot.
                self._finished(domain, len(leases))
            attempts = []
            for lease, result in zip(leases, results, strict=True):
                outcomes = self._outcomes(lease.message, result)
                await self._bounce_if_needed(lease.message, outcomes, result)
                if self._policy.delay_warning:  # off by default: no coroutine per message
                    await self._warn_if_delayed(lease.message, outcomes, result)
                attempts.append((lease, outcomes))
            stored = await self._store.record_many(attempts)
        except asyncio.CancelledError:
            # Shutting down: give the leases back so another run delivers them (if the
            # attempt went out already, that may deliver twice: at least once, never zero).
            await asyncio.shield(self._release_all(leases, None))
            raise
        except Exception as exc:
            self.stats.errors += 1
            ids = ", ".join(lease.message.id for lease in leases)
            logger.exception("delivery of %s failed: %s", ids, exc)
            await self._release_all(leases, self._clock() + self._park)
            return
        for (lease, outcomes), result, done in zip(attempts, results, stored, strict=True):
            if isinstance(done, QueueError):  # e.g. deleted meanwhile: this one only
                self.stats.errors += 1
                logger.error("delivery of %s: %s", lease.message.id, done)
                await self._release(lease, self._clock() + self._park)
                continue
            self.stats.attempts += 1
            if self._observer is not None:
                self._notify(lease.message, result, outcomes)

    async def _release_all(self, leases: Sequence[Lease], retry_at: float | None) -> None:
        for lease in leases:
            await self._release(lease, retry_at)

    def _notify(
        self, message: QueuedMessage, result: SendResult, outcomes: Sequence[AttemptOutcome]
    ) -> None:
        # The attempt is recorded: an observer's failure (metrics, the delivery log) must
        # not pass for a delivery failure, which would release the lease and send again.
        assert self._observer is not None
        try:
            self._observer(message, result, outcomes)
        except Exception:
            logger.exception("delivery observer failed on %s", message.id)

    def _outcomes(self, message: QueuedMessage, result: SendResult) -> list[AttemptOutcome]:
        outcomes = attempt_outcomes(message, result, self._policy, self._clock())
        stats = self.stats
        for o in outcomes:
            if o.state is RecipientState.DELIVERED:
                stats.delivered += 1
            elif o.state is RecipientState.BOUNCED:
                stats.bounced += 1
            else:
                stats.deferred += 1
        return outcomes

    async def _bounce_if_needed(
        self, message: QueuedMessage, outcomes: Sequence[AttemptOutcome], result: SendResult
    ) -> None:
        if not should_bounce(message.sender, message.is_bounce):
            return
        failed = bounced_recipients(outcomes, result, self._clock())
        if failed:
            await self._send_dsn(message, failed)

    async def _warn_if_delayed(
        self, message: QueuedMessage, outcomes: Sequence[AttemptOutcome], result: SendResult
    ) -> None:
        if not should_bounce(message.sender, message.is_bounce):
            return
        delayed = delayed_recipients(message, outcomes, result, self._policy, self._clock())
        if delayed and await self._store.claim_delay_warning(message.id):
            await self._send_dsn(message, delayed)
            self.stats.delay_warnings += 1

    async def _send_dsn(self, message: QueuedMessage, failed: Sequence[FailedRecipient]) -> None:
        assert message.data is not None
        dsn = build_dsn(
            reporting_mta=self._hostname,
            original_sender=message.sender,
            original_data=message.data,
            failed=failed,
            arrival=message.created_at,
            envid=message.envid,
        )
        await self._store.enqueue(
            NewMessage("", [message.sender], dsn, is_bounce=True, origin=f"dsn:{message.id}")
        )
        self.stats.dsn_sent += 1
        self.wake()

    async def _expire(self, now: float) -> None:
        """Messages past their lifetime that no attempt is due for (e.g. a far-off next
        attempt): bounce what is left of them and tell the senders."""
        leases = await self._store.expired(
            now,
            self._policy.max_queue_lifetime,
            self._policy.bounce_queue_lifetime,
            self._batch,
        )
        for lease in leases:
            message = lease.message
            outcomes = expiry_outcomes(message)
            self.stats.bounced += len(outcomes)
            self.stats.expired += len(outcomes)
            if should_bounce(message.sender, message.is_bounce):
                failed = [
                    FailedRecipient(o.recipient, "4.4.7", o.reply, o.host, last_attempt=now)
                    for o in outcomes
                ]
                await self._send_dsn(message, failed)
            await self._store.record(lease, outcomes)


def _domain(message: QueuedMessage) -> str:
    for r in message.recipients:
        try:
            return domain_of(r.recipient)
        except MxpressError:
            continue
    return ""
