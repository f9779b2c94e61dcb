"""The data side of `mxpress trace`: phases on one clock, the verdict, JSON.

Pure: no I/O and no clock of its own. The tracer (tracer.py) reads its clock at each
boundary and hands the readings in, so a trace built from fake readings is exact.

Phases tile the run: each starts where the previous one ended, so their durations add
up to `total_ms` and draw a waterfall. The few microseconds of local work between two
phases count toward the next one (measuring them apart would only add noise).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Short titles for tables, and the words the verdict uses ("72% of the time was ...").
TITLES: Mapping[str, tuple[str, str]] = {
    "dns_mx": ("DNS MX", "the MX lookup"),
    "dns_addr": ("DNS address", "the address lookup"),
    "pool": ("pool", "getting a session from the pool"),
    "connect": ("TCP connect", "the TCP connect"),
    "tls_context": ("TLS context", "building the TLS context (loading CA certificates)"),
    "tls": ("TLS handshake", "the TLS handshake"),
    "banner": ("banner", "waiting for the banner"),
    "ehlo": ("EHLO", "EHLO"),
    "starttls": ("STARTTLS", "the STARTTLS command"),
    "ehlo2": ("EHLO (TLS)", "the second EHLO"),
    "auth": ("AUTH", "AUTH"),
    "mail_rcpt": ("MAIL+RCPT", "the MAIL+RCPT flight"),
    "mail_rcpt_data": ("MAIL+RCPT+DATA", "the MAIL+RCPT+DATA flight"),
    "mail_rcpt_bdat": ("MAIL+RCPT+BDAT", "the MAIL+RCPT+BDAT flight with the message"),
    "mail": ("MAIL", "MAIL FROM"),
    "rcpt": ("RCPT", "RCPT TO"),
    "data": ("DATA", "the DATA command"),
    "data_transfer": ("data + reply", "the data transfer and final reply"),
    "quit": ("QUIT", "QUIT"),
}

# Phases a pooled (reused) session does not pay again.
SETUP_PHASES = frozenset({"connect", "tls", "banner", "ehlo", "starttls", "ehlo2", "auth"})


def title(name: str) -> str:
    return TITLES.get(name, (name, name))[0]


def describe(name: str) -> str:
    return TITLES.get(name, (name, name))[1]


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of a run; times in milliseconds from the start of the run."""

    name: str
    start_ms: float
    duration_ms: float
    detail: str = ""
    host: str = ""  # the server this phase talked to ("" for DNS and local work)
    ok: bool = True  # False: this step failed (the run moved on to the next host, or ended)
    cache: str | None = None  # DNS phases: "hit", "miss" or "stale"

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.duration_ms


@dataclass(slots=True)
class Trace:
    """One traced attempt, from the first DNS query to QUIT."""

    target: str  # the recipient (direct mode) or HOST:PORT (--server)
    mode: str  # "probe" (MAIL+RCPT, then RSET), "send", or "connect" (no recipients)
    run: int = 1
    phases: list[Phase] = field(default_factory=list)
    total_ms: float = 0.0
    mx: list[dict[str, Any]] = field(default_factory=list)  # host, preference, addresses
    chosen: dict[str, Any] | None = None  # host, address, port, why
    attempts: list[dict[str, Any]] = field(default_factory=list)  # servers that failed
    tls: dict[str, Any] | None = None  # version, cipher, resumed, verified
    capabilities: list[str] = field(default_factory=list)
    session: str | None = None  # "new" or "reused"; None when no session was opened
    recipients: dict[str, str | None] = field(default_factory=dict)  # address -> reply
    outcome: str = "failed"  # see OUTCOMES
    error: str | None = None

    def phase(self, name: str) -> Phase | None:
        """The last phase called `name` (the one that succeeded, after a fallback)."""
        for phase in reversed(self.phases):
            if phase.name == name:
                return phase
        return None

    @property
    def ok(self) -> bool:
        return self.outcome in ("connected", "accepted", "delivered")


OUTCOMES = {
    "connected": "session set up (no recipients given)",
    "accepted": "every recipient would be accepted (nothing was delivered)",
    "delivered": "the message was delivered to every recipient",
    "partial": "some recipients were refused",
    "refused": "no recipient (or the sender) was accepted",
    "failed": "no session, or it broke (see error)",
}


class TraceBuilder:
    """Collects clock readings (seconds, one clock) into a `Trace` (ms from `start`)."""

    def __init__(self, target: str, mode: str, start: float, *, run: int = 1) -> None:
        self.trace = Trace(target, mode, run)
        self._t0 = start

    def add(
        self,
        name: str,
        start: float,
        end: float,
        detail: str = "",
        *,
        host: str = "",
        ok: bool = True,
        cache: str | None = None,
    ) -> Phase:
        phase = Phase(
            name,
            (start - self._t0) * 1e3,
            max(0.0, end - start) * 1e3,
            detail,
            host,
            ok,
            cache,
        )
        self.trace.phases.append(phase)
        return phase

    def add_sequence(
        self, start: float, spans: Iterable[tuple[str, float, str]], *, host: str = ""
    ) -> float:
        """Phases measured as durations only (name, seconds, detail), back to back from
        `start`; returns where the last one ends."""
        at = start
        for name, seconds, detail in spans:
            self.add(name, at, at + seconds, detail, host=host)
            at += seconds
        return at

    def finish(self, end: float) -> Trace:
        self.trace.total_ms = max(0.0, end - self._t0) * 1e3
        return self.trace


def flight_spans(
    timings: Mapping[str, float], wall: float, *, pipelined: bool, body_sent: bool
) -> list[tuple[str, float]]:
    """Split one transaction (its `TransactionResult.timings`, seconds, and the `wall`
    time the send took) into the flights as they happened, filling `wall` exactly.

    Pipelined, MAIL RCPT DATA go out together and their replies come back together, so
    they are one phase; then the body and its final reply. With BDAT the message rides
    in that same first flight. Lock-step, each command is its own round trip.
    """
    if "total" not in timings:  # nothing was sent (e.g. the session broke first)
        return [("mail", wall)]
    mail, rcpt, data = (timings.get(k, 0.0) for k in ("mail", "rcpt", "data"))
    if pipelined:
        if "data" in timings and body_sent:
            first = min(mail + rcpt + data, wall)
            return [("mail_rcpt_data", first), ("data_transfer", wall - first)]
        if body_sent:
            return [("mail_rcpt_bdat", wall)]
        return [("mail_rcpt_data" if "data" in timings else "mail_rcpt", wall)]
    spans: list[tuple[str, float]] = []
    left = wall
    for name, seconds in (("mail", mail), ("rcpt", rcpt), ("data", data)):
        if name in timings:
            spans.append((name, min(seconds, left)))
            left -= spans[-1][1]
    if body_sent:
        spans.append(("data_transfer", left))
    else:  # the rest of the wall time is the tail of the last command's round trip
        name, seconds = spans.pop()
        spans.append((name, seconds + left))
    return spans


def verdict(trace: Trace) -> str:
    """The dominant cost: "72% of the time was the TLS handshake (3.1 of 4.3 ms)".

    Phases of the same name add up (two connects after a fallback are one cost)."""
    if not trace.phases or trace.total_ms <= 0:
        return "nothing took measurable time"
    costs: dict[str, float] = defaultdict(float)
    for phase in trace.phases:
        costs[phase.name] += phase.duration_ms
    name, ms = max(costs.items(), key=lambda item: item[1])
    share = 100.0 * ms / trace.total_ms
    what = describe(name)
    if name == "connect" and any(not p.ok and p.name == "connect" for p in trace.phases):
        what += "s (including failed ones)"
    return f"{share:.0f}% of the time was {what} ({ms:.1f} of {trace.total_ms:.1f} ms)"


def setup_ms(trace: Trace) -> float:
    """Time spent setting up the session (what a pooled session saves)."""
    return sum(p.duration_ms for p in trace.phases if p.name in SETUP_PHASES and p.ok)


def compare(first: Trace, later: Trace) -> str:
    """What a later run saved: "run 2 was 63% faster (4.1 ms vs 11.2 ms): DNS from cache,
    TLS resumed"."""
    if first.total_ms <= 0:
        return f"run {later.run}: {later.total_ms:.1f} ms"
    change = 100.0 * (first.total_ms - later.total_ms) / first.total_ms
    how = f"{change:.0f}% faster" if change >= 0 else f"{-change:.0f}% slower"
    reasons: list[str] = []
    if _dns_cached(later) and not _dns_cached(first):
        reasons.append("DNS from cache")
    if later.session == "reused":
        reasons.append("session reused (no connect, TLS or EHLO)")
    elif later.tls and later.tls.get("resumed") and not (first.tls and first.tls.get("resumed")):
        reasons.append("TLS resumed")
    if first.attempts and later.attempts and _attempts_ms(later) < _attempts_ms(first):
        reasons.append("failed host skipped faster (backoff)")
    text = (
        f"run {later.run} was {how} than run {first.run} "
        f"({later.total_ms:.1f} ms vs {first.total_ms:.1f} ms)"
    )
    return text + (": " + ", ".join(reasons) if reasons else "")


def _attempts_ms(trace: Trace) -> float:
    return sum(float(a["ms"]) for a in trace.attempts)


def _dns_cached(trace: Trace) -> bool:
    dns = [p for p in trace.phases if p.cache is not None]
    return bool(dns) and all(p.cache == "hit" for p in dns)


def bar(phase: Phase, total_ms: float, width: int) -> tuple[int, int]:
    """(offset, length) in cells of a waterfall `width` cells wide for `total_ms`.
    A phase too short for a cell still gets one, so every phase is visible."""
    if total_ms <= 0 or width <= 0:
        return 0, 0
    scale = width / total_ms
    left = min(width - 1, int(phase.start_ms * scale))
    right = min(width, round(phase.end_ms * scale))
    return left, max(1, right - left)


def to_json(trace: Trace) -> dict[str, Any]:
    """The trace as JSON-ready data (keys documented in docs/trace.md)."""
    return {
        "run": trace.run,
        "target": trace.target,
        "mode": trace.mode,
        "total_ms": round(trace.total_ms, 3),
        "phases": [
            {
                "name": p.name,
                "title": title(p.name),
                "start_ms": round(p.start_ms, 3),
                "duration_ms": round(p.duration_ms, 3),
                "detail": p.detail,
                "host": p.host,
                "ok": p.ok,
                "cache": p.cache,
            }
            for p in trace.phases
        ],
        "mx": trace.mx,
        "chosen": trace.chosen,
        "attempts": trace.attempts,
        "tls": trace.tls,
        "capabilities": trace.capabilities,
        "session": trace.session,
        "recipients": trace.recipients,
        "outcome": trace.outcome,
        "error": trace.error,
        "verdict": verdict(trace),
    }
