"""The durable queue's contract: what the relay needs from a store.

A message is accepted (250 / HTTP 2xx) only after `enqueue` returns, and `enqueue` returns
only after the message is on disk and fsynced. Each recipient has its own state; a message
is done when every recipient is delivered or bounced.

Implementations: queue/sqlite.py (embedded default). Times are wall-clock epoch seconds
(`time.time()`), because they must survive a restart; every in-process delay uses the
monotonic clock.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from mxpress.errors import QueueError


class RecipientState(StrEnum):
    PENDING = "pending"  # not yet tried, or due for another try
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # a transient failure; next_attempt says when
    BOUNCED = "bounced"  # a permanent failure, or the queue lifetime ran out


class MessageState(StrEnum):
    ACTIVE = "active"  # some recipient still to deliver
    HELD = "held"  # an operator put it on hold: never leased until released
    DONE = "done"  # every recipient delivered or bounced


@dataclass(frozen=True, slots=True)
class NewMessage:
    """What a submission hands to the queue."""

    sender: str  # "" for the null sender (bounces)
    recipients: Sequence[str]
    data: bytes
    is_bounce: bool = False  # a DSN we generated: never bounced itself
    origin: str = ""  # "smtp:user@peer", "http:key-name", ...
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    recipient: str
    state: RecipientState
    attempts: int = 0
    next_attempt: float | None = None
    last_reply: str = ""  # "550 5.1.1 no such user" or the failure reason
    last_host: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message as stored; `data` is loaded only when asked for (see `get`)."""

    id: str
    sender: str
    state: MessageState
    created_at: float
    size: int
    is_bounce: bool
    origin: str
    recipients: tuple[RecipientStatus, ...] = ()
    data: bytes | None = None
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A message taken for one delivery attempt. Until `expires_at` no other worker gets
    it; if the worker dies, the lease runs out and the message is delivered again."""

    message: QueuedMessage  # with data, and only the recipients due now
    token: str
    expires_at: float
    # True: `message` holds every recipient still to deliver (fresh mail, leased as it
    # was stored), so an attempt that ends them all ends the message.
    whole: bool = False


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """The result of one attempt for one recipient."""

    recipient: str
    state: RecipientState  # DELIVERED, DEFERRED or BOUNCED
    reply: str = ""
    host: str = ""
    next_attempt: float | None = None  # for DEFERRED


@dataclass(frozen=True, slots=True)
class QueueFilter:
    state: MessageState | None = None
    recipient_state: RecipientState | None = None
    sender: str | None = None
    recipient_domain: str | None = None
    limit: int = 100
    after_id: str | None = None  # pagination: ids sort by creation


@dataclass(slots=True)
class QueueCounts:
    """Queue depth by recipient state, and messages by state."""

    messages: dict[str, int] = field(default_factory=dict)
    recipients: dict[str, int] = field(default_factory=dict)


class QueueAdmin(Protocol):
    """What submission and administration need of a queue (the HTTP API, the CLI): a
    `QueueStore`, or a view over several (ShardedQueue, one file per worker)."""

    async def enqueue(self, message: NewMessage) -> str:
        """Store durably (fsync) and return the new message id."""
        ...

    async def get(self, message_id: str, *, with_data: bool = False) -> QueuedMessage | None: ...
    async def list(self, where: QueueFilter) -> builtins.list[QueuedMessage]: ...
    async def counts(self) -> QueueCounts: ...
    async def hold(self, message_id: str) -> bool: ...
    async def release_hold(self, message_id: str) -> bool: ...
    async def retry_now(self, message_id: str | None = None) -> int:
        """Make deferred recipients due now (one message, or all); returns how many."""
        ...

    async def delete(self, message_id: str) -> bool: ...


class QueueStore(QueueAdmin, Protocol):
    """The relay's durable queue. All methods are coroutines safe to call concurrently."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def lease_due(self, now: float, limit: int, lease_seconds: float) -> builtins.list[Lease]:
        """Up to `limit` active, unleased (or lease-expired) messages with recipients due
        at `now` (pending, or deferred with next_attempt <= now), oldest due first."""
        ...

    async def record(self, lease: Lease, outcomes: Sequence[AttemptOutcome]) -> QueuedMessage:
        """Record one attempt's per-recipient outcomes, release the lease, and return the
        updated message (state DONE when no recipient is left to deliver)."""
        ...

    async def record_many(
        self, attempts: Sequence[tuple[Lease, Sequence[AttemptOutcome]]]
    ) -> builtins.list[QueuedMessage | QueueError]:
        """`record` for several attempts in one write. Each gets its updated message, or
        the QueueError that `record` would have raised for it (nothing of it stored)."""
        ...

    async def claim_delay_warning(self, message_id: str) -> bool:
        """True the first time it is asked for an active message, False ever after (or
        for a message unknown or done): the caller then tells the sender of the delay.
        Claimed before the warning is sent, so a crash in between loses one warning
        rather than sending two."""
        ...

    async def release(self, lease: Lease, *, retry_at: float | None = None) -> None:
        """Give a lease back without an attempt (shutting down, or the destination is
        busy). With `retry_at`, its recipients are not due before then (attempts unchanged).
        """
        ...

    async def expired(
        self,
        now: float,
        max_age: float,
        bounce_max_age: float,
        limit: int,
        lease_seconds: float = 300.0,
    ) -> builtins.list[Lease]:
        """Lease active messages older than their lifetime (bounces have their own) that
        still have undelivered recipients, with all of those recipients and the body:
        the caller bounces them (DSN) and `record`s that with the lease. Leased, so that
        no worker delivers a recipient while the sweeper bounces it."""
        ...
