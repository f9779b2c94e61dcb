"""Per-recipient outcomes of a delivery attempt, and the result of a `Mailer.send`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from mxpress.errors import MxpressError
from mxpress.protocol.replies import Reply


class Outcome(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # transient: try again later
    BOUNCED = "bounced"  # permanent: trying again will not help


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What happened to one recipient: the outcome, the deciding reply, where, and why."""

    recipient: str
    outcome: Outcome
    reply: Reply | None = None
    host: str | None = None  # the server that answered (host:port), when one did
    reason: str = ""
    ip: str | None = None  # that server's IP address (host may be a relay's name)
    mx: str | None = None  # the MX host name it was found under (direct delivery)

    def __str__(self) -> str:
        where = f" at {self.host}" if self.host else ""
        return f"{self.recipient}: {self.outcome.value}{where}: {self.reason or self.reply}"


@dataclass(slots=True)
class SendResult:
    """The result of sending one message to all its recipients."""

    sender: str
    recipients: dict[str, RecipientResult] = field(default_factory=dict)
    # Phase durations in seconds (dns_mx, dns_addr, queue, pool, connect, tls, ehlo, ...,
    # end_of_data) of the attempts made, summed per phase when several destinations were
    # involved.
    timings: dict[str, float] = field(default_factory=dict)
    new_sessions: int = 0
    reused_sessions: int = 0
    # TLS handshakes of the sessions opened for this send: full, or resumed (cheaper).
    tls_full: int = 0
    tls_resumed: int = 0
    # Per recipient domain (direct delivery): the MX answer was a cache "hit", a "miss"
    # (asked upstream) or "stale" (served expired while the resolver failed).
    dns: dict[str, str] = field(default_factory=dict)
    # Set when the message could not be sent at all (no envelope, unserialisable).
    error: MxpressError | None = None

    def _with(self, outcome: Outcome) -> dict[str, RecipientResult]:
        return {r: res for r, res in self.recipients.items() if res.outcome is outcome}

    @property
    def accepted(self) -> dict[str, RecipientResult]:
        return self._with(Outcome.DELIVERED)

    @property
    def rejected(self) -> dict[str, RecipientResult]:
        return self._with(Outcome.BOUNCED)

    @property
    def deferred(self) -> dict[str, RecipientResult]:
        return self._with(Outcome.DEFERRED)

    @property
    def ok(self) -> bool:
        """Every recipient delivered."""
        return self.error is None and all(
            r.outcome is Outcome.DELIVERED for r in self.recipients.values()
        )

    def add_timings(self, timings: dict[str, float]) -> None:
        for phase, seconds in timings.items():
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds
