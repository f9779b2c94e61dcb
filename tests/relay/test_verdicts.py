"""What an attempt means per recipient (delivery/verdicts.py), without servers."""

from __future__ import annotations

from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.delivery.verdicts import (
    attempt_outcomes,
    bounced_recipients,
    delayed_recipients,
    expiry_outcomes,
)
from mxpress.protocol.replies import Reply
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.store import MessageState, QueuedMessage, RecipientState, RecipientStatus

T0 = 1_700_000_000.0
POLICY = RetryPolicy(first_retry=60, max_backoff=600, jitter=0.0, max_queue_lifetime=3600)
RCPTS = ("ok@a.test", "gone@a.test", "later@a.test", "skipped@a.test")


def message(created_at: float = T0) -> QueuedMessage:
    statuses = tuple(
        RecipientStatus(r, RecipientState.PENDING, 1 if r == "later@a.test" else 0, None)
        for r in RCPTS
    )
    return QueuedMessage(
        "id1", "app@x.test", MessageState.ACTIVE, created_at, 10, False, "t", statuses
    )


def result() -> SendResult:
    r = SendResult("app@x.test")
    r.recipients = {
        "ok@a.test": RecipientResult(
            "ok@a.test", Outcome.DELIVERED, Reply(250, ("ok",), "2.0.0"), "mx:25"
        ),
        "gone@a.test": RecipientResult(
            "gone@a.test", Outcome.BOUNCED, Reply(550, ("no such user",), "5.1.1"), "mx:25"
        ),
        "later@a.test": RecipientResult(
            "later@a.test",
            Outcome.DEFERRED,
            Reply(451, ("try later",), "4.3.0"),
            "mx:25",
            "451 4.3.0 try later",
        ),
    }
    return r


def test_each_recipient_gets_its_verdict() -> None:
    got = attempt_outcomes(message(), result(), POLICY, T0 + 10)
    assert [(o.recipient, o.state, o.host) for o in got] == [
        ("ok@a.test", RecipientState.DELIVERED, "mx:25"),
        ("gone@a.test", RecipientState.BOUNCED, "mx:25"),
        ("later@a.test", RecipientState.DEFERRED, "mx:25"),
        ("skipped@a.test", RecipientState.DEFERRED, ""),
    ]
    assert got[1].reply == "550 5.1.1 no such user" and got[1].next_attempt is None
    # The second failure of "later" waits twice the first retry; a first one waits one.
    assert got[2].next_attempt == T0 + 10 + 120 and got[2].reply == "451 4.3.0 try later"
    assert got[3].next_attempt == T0 + 10 + 60 and got[3].reply == "not attempted"


def test_past_its_lifetime_a_failing_recipient_bounces_and_reports_4_4_7() -> None:
    got = attempt_outcomes(message(), result(), POLICY, T0 + 3600)
    assert [o.state for o in got] == [
        RecipientState.DELIVERED,
        RecipientState.BOUNCED,
        RecipientState.BOUNCED,
        RecipientState.BOUNCED,
    ]
    assert got[2].reply == "expired in queue: 451 4.3.0 try later"
    failed = bounced_recipients(got, result(), T0 + 3600)
    assert [(f.recipient, f.status) for f in failed] == [
        ("gone@a.test", "5.1.1"),
        ("later@a.test", "4.4.7"),
        ("skipped@a.test", "4.4.7"),
    ]


def test_expiry_bounces_every_recipient_left() -> None:
    got = expiry_outcomes(message())
    assert {o.state for o in got} == {RecipientState.BOUNCED}
    assert got[2].reply == "expired in queue after 1 attempts: "


def test_a_delay_warning_reports_the_deferred_recipients_once_old_enough() -> None:
    warn = RetryPolicy(first_retry=60, max_backoff=600, max_queue_lifetime=3600, delay_warning=600)
    now = T0 + 600
    outcomes = attempt_outcomes(message(), result(), warn, now)
    delayed = delayed_recipients(message(), outcomes, result(), warn, now)
    assert [(d.recipient, d.action, d.status) for d in delayed] == [
        ("later@a.test", "delayed", "4.3.0"),  # the server's enhanced code
        ("skipped@a.test", "delayed", "4.0.0"),  # not attempted: no reply, a 4xx class
    ]
    assert all(d.will_retry_until == T0 + 3600 and d.last_attempt == now for d in delayed)
    assert delayed[0].diagnostic == "451 4.3.0 try later" and delayed[0].remote_mta == "mx:25"
    # Younger than delay_warning, or the policy does not warn at all: nothing.
    assert not delayed_recipients(message(), outcomes, result(), warn, now - 1)
    assert not delayed_recipients(message(), outcomes, result(), POLICY, now)
