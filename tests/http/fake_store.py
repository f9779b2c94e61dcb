"""An in-memory QueueStore for the HTTP API tests: no disk, no threads, no event loop
of its own (so it works under any loop, including the one schemathesis's ASGI client
runs). It records every call, so a test can prove that a refused request stored nothing.
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mxpress.errors import QueueError
from mxpress.queue.store import (
    AttemptOutcome,
    Lease,
    MessageState,
    NewMessage,
    QueueCounts,
    QueuedMessage,
    QueueFilter,
    RecipientState,
    RecipientStatus,
)

if TYPE_CHECKING:
    from mxpress.queue.store import QueueStore

T0 = 1_700_000_000.0


class FakeStore:
    """Just enough of a queue: messages in a dict, ids that sort by arrival."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.messages: dict[str, QueuedMessage] = {}
        self.enqueued: list[NewMessage] = []  # every successful enqueue, in order
        self.calls: list[str] = []  # method names, in order
        self.fail_with: Exception | None = None  # raised by every call while set
        self.warned: set[str] = set()  # ids whose delay warning was claimed
        self._ids = itertools.count(1)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_with is not None:
            raise self.fail_with

    async def open(self) -> None:
        self._call("open")

    async def close(self) -> None:
        self._call("close")

    async def enqueue(self, message: NewMessage) -> str:
        self._call("enqueue")
        if not message.recipients:
            raise QueueError("a message needs at least one recipient; nothing was queued")
        message_id = f"{int(self.now * 1000):012x}{next(self._ids):08x}"
        recipients = tuple(
            RecipientStatus(r, RecipientState.PENDING, next_attempt=self.now, updated_at=self.now)
            for r in dict.fromkeys(message.recipients)
        )
        self.messages[message_id] = QueuedMessage(
            id=message_id,
            sender=message.sender,
            state=MessageState.ACTIVE,
            created_at=self.now,
            size=len(message.data),
            is_bounce=message.is_bounce,
            origin=message.origin,
            recipients=recipients,
            data=bytes(message.data),
            envid=message.envid,
        )
        self.enqueued.append(message)
        return message_id

    # Delivery-side methods: the HTTP API never calls them.
    async def lease_due(self, now: float, limit: int, lease_seconds: float) -> builtins.list[Lease]:
        self._call("lease_due")
        return []

    async def record(self, lease: Lease, outcomes: Sequence[AttemptOutcome]) -> QueuedMessage:
        self._call("record")
        raise QueueError("the fake store does not deliver")

    async def release(self, lease: Lease, *, retry_at: float | None = None) -> None:
        self._call("release")

    async def expired(
        self,
        now: float,
        max_age: float,
        bounce_max_age: float,
        limit: int,
        lease_seconds: float = 300.0,
    ) -> builtins.list[Lease]:
        self._call("expired")
        return []

    # What the HTTP API uses.
    async def get(self, message_id: str, *, with_data: bool = False) -> QueuedMessage | None:
        self._call("get")
        message = self.messages.get(message_id)
        if message is None or with_data:
            return message
        return replace(message, data=None)

    async def list(self, where: QueueFilter) -> builtins.list[QueuedMessage]:
        self._call("list")
        out = []
        for message_id in sorted(self.messages):
            m = self.messages[message_id]
            if where.after_id is not None and message_id <= where.after_id:
                continue
            if where.state is not None and m.state != where.state:
                continue
            if where.sender is not None and m.sender.lower() != where.sender.lower():
                continue
            domain = (where.recipient_domain or "").lower().lstrip("@")
            if (where.recipient_state, domain) != (None, "") and not any(
                (where.recipient_state is None or r.state == where.recipient_state)
                and (not domain or r.recipient.rpartition("@")[2].lower() == domain)
                for r in m.recipients
            ):
                continue
            out.append(replace(m, data=None))
            if len(out) == where.limit:
                break
        return out

    async def counts(self) -> QueueCounts:
        self._call("counts")
        counts = QueueCounts(
            messages={str(s): 0 for s in MessageState},
            recipients={str(s): 0 for s in RecipientState},
        )
        for m in self.messages.values():
            counts.messages[str(m.state)] += 1
            for r in m.recipients:
                counts.recipients[str(r.state)] += 1
        return counts

    async def hold(self, message_id: str) -> bool:
        self._call("hold")
        m = self.messages.get(message_id)
        if m is None or m.state == MessageState.DONE:
            return False
        self.messages[message_id] = replace(m, state=MessageState.HELD)
        return True

    async def release_hold(self, message_id: str) -> bool:
        self._call("release_hold")
        m = self.messages.get(message_id)
        if m is None or m.state != MessageState.HELD:
            return False
        self.messages[message_id] = replace(m, state=MessageState.ACTIVE)
        return True

    async def retry_now(self, message_id: str | None = None) -> int:
        self._call("retry_now")
        count = 0
        for mid, m in self.messages.items():
            if message_id is not None and mid != message_id:
                continue
            recipients = []
            for r in m.recipients:
                if r.state == RecipientState.DEFERRED and (r.next_attempt or 0) > self.now:
                    r = replace(r, next_attempt=self.now)
                    count += 1
                recipients.append(r)
            self.messages[mid] = replace(m, recipients=tuple(recipients))
        return count

    async def delete(self, message_id: str) -> bool:
        self._call("delete")
        return self.messages.pop(message_id, None) is not None

    async def claim_delay_warning(self, message_id: str) -> bool:
        self._call("claim_delay_warning")
        if message_id not in self.messages or message_id in self.warned:
            return False
        self.warned.add(message_id)
        return True

    # Test helpers.
    def set_recipient(self, message_id: str, index: int, **changes: object) -> None:
        """Change one recipient's status (as a delivery attempt would)."""
        m = self.messages[message_id]
        recipients = list(m.recipients)
        recipients[index] = replace(recipients[index], **changes)  # type: ignore[arg-type]
        done = all(
            r.state in (RecipientState.DELIVERED, RecipientState.BOUNCED) for r in recipients
        )
        state = MessageState.DONE if done else m.state
        self.messages[message_id] = replace(m, recipients=tuple(recipients), state=state)


if TYPE_CHECKING:

    def _conforms(store: FakeStore) -> QueueStore:
        return store
