"""What one attempt means for each recipient of a queued message, as the queue records
it, and what a bounce tells the sender about each failed recipient.

- Delivered on a 2xx; bounced on a 5xx, or on any failure once the queue lifetime is
  over; otherwise deferred, with the retry policy's next time.
- A bounced recipient's DSN status comes from the reply's enhanced code; one still
  failing transiently when its lifetime ran out reports 4.4.7.
- Past the policy's `delay_warning`, the deferred recipients are reported once in a
  delay warning (Action: delayed, Will-Retry-Until: the end of the lifetime).
"""

from __future__ import annotations

from collections.abc import Sequence

from mxpress.delivery.bounce import FailedRecipient, status_for
from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.store import AttemptOutcome, QueuedMessage, RecipientState


def attempt_outcomes(
    message: QueuedMessage, result: SendResult, policy: RetryPolicy, now: float
) -> list[AttemptOutcome]:
    """One outcome per recipient of the attempt (a recipient the result does not name
    was not attempted: deferred)."""
    expired = policy.expired(message.created_at, now, message.is_bounce)
    outcomes = []
    for status in message.recipients:
        r = result.recipients.get(status.recipient) or RecipientResult(
            status.recipient, Outcome.DEFERRED, reason="not attempted"
        )
        reply = (
            str(r.reply)
            if r.reply is not None and r.outcome is not Outcome.DEFERRED
            else (r.reason or str(r.reply or ""))
        )
        if r.outcome is Outcome.DELIVERED:
            state, next_attempt = RecipientState.DELIVERED, None
        elif r.outcome is Outcome.BOUNCED or expired:
            state, next_attempt = RecipientState.BOUNCED, None
            if r.outcome is not Outcome.BOUNCED:
                reply = f"expired in queue: {reply}"
        else:
            state = RecipientState.DEFERRED
            next_attempt = now + policy.next_delay(status.attempts + 1)
        outcomes.append(AttemptOutcome(status.recipient, state, reply, r.host or "", next_attempt))
    return outcomes


def bounced_recipients(
    outcomes: Sequence[AttemptOutcome], result: SendResult, now: float
) -> list[FailedRecipient]:
    """The bounced recipients of an attempt, as a DSN reports them."""
    failed = []
    for o in outcomes:
        if o.state is not RecipientState.BOUNCED:
            continue
        r = result.recipients.get(o.recipient)
        expired = r is None or r.outcome is not Outcome.BOUNCED
        status = _dsn_status(r, expired=expired)
        if expired and status.startswith("4"):
            status = "4.4.7"  # still failing when the lifetime ran out
        failed.append(FailedRecipient(o.recipient, status, o.reply, o.host, last_attempt=now))
    return failed


def delayed_recipients(
    message: QueuedMessage,
    outcomes: Sequence[AttemptOutcome],
    result: SendResult,
    policy: RetryPolicy,
    now: float,
) -> list[FailedRecipient]:
    """The deferred recipients of an attempt, as a delay warning reports them; none
    while the message is younger than the policy's `delay_warning` (or it is 0)."""
    if not policy.warns(message.created_at, now, message.is_bounce):
        return []
    until = message.created_at + policy.lifetime(message.is_bounce)
    delayed = []
    for o in outcomes:
        if o.state is not RecipientState.DEFERRED:
            continue
        delayed.append(
            FailedRecipient(
                o.recipient,
                _dsn_status(result.recipients.get(o.recipient), expired=False),
                o.reply,
                o.host,
                action="delayed",
                last_attempt=now,
                will_retry_until=until,
            )
        )
    return delayed


def _dsn_status(r: RecipientResult | None, *, expired: bool) -> str:
    reply = r.reply if r is not None else None
    return status_for(
        reply.code if reply else None, reply.enhanced if reply else None, expired=expired
    )


def expiry_outcomes(message: QueuedMessage) -> list[AttemptOutcome]:
    """Every recipient still to deliver of a message past its lifetime: bounced."""
    return [
        AttemptOutcome(
            r.recipient,
            RecipientState.BOUNCED,
            f"expired in queue after {r.attempts} attempts: {r.last_reply}",
            r.last_host,
        )
        for r in message.recipients
    ]
