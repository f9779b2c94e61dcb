"""The words of a trace: what each phase did and why a server was chosen.

Small functions of what the session and resolver report, kept apart from the tracer so
that it reads as the sequence of steps it times.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import cast

from mxpress.client.session import Session, SessionOptions
from mxpress.dns.cache import Answer
from mxpress.dns.mx import MXRecord, MXRoute, is_null_mx
from mxpress.observe.request import host_port
from mxpress.protocol.client import TransactionResult

_ORDINALS = ("first", "second", "third", "fourth", "fifth")


def setup_detail(name: str, session: Session, opts: SessionOptions, *, server: bool) -> str:
    """What a setup phase of a new session did, in a few words."""
    if name == "connect":
        lookup = _system_lookup(opts.host) if server else ""
        return f"TCP to {host_port(opts.host, opts.port)}{lookup}"
    if name == "banner":
        return str(session.banner).split("\n")[0][:80] if session.banner else ""
    if name == "ehlo":
        if "ehlo2" in session.timings:
            return "in plaintext; the server offers STARTTLS"
        return _extensions(session)
    if name == "starttls":
        return "220: go ahead with TLS"
    if name == "ehlo2":
        return f"again under TLS (RFC 3207): {_extensions(session)}"
    if name == "tls" and session.tls_info is not None:
        info = session.tls_info
        how = "resumed" if info.resumed else "full handshake"
        checked = "" if opts.verify else ", certificate not verified"
        return f"{info.version} {info.cipher}, {how}{checked}"
    if name == "auth":
        return f"as {opts.username}"
    if name == "tls_context":
        return "SSL context with the CA certificates (built once, then shared)"
    return ""


def cache_state(before: dict[str, int], after: dict[str, int]) -> str:
    d = {k: after[k] - before[k] for k in after}
    if d["stale_served"]:
        return "stale"
    if d["misses"] or d["joined"] or d["upstream_queries"]:
        return "miss"
    return "hit"


def cache_text(state: str, before: dict[str, int], after: dict[str, int]) -> str:
    if state == "hit":
        return "cache hit"
    if state == "stale":
        return "stale answer served (upstream failed)"
    q = after["upstream_queries"] - before["upstream_queries"]
    return f"cache miss, {q} upstream quer{'y' if q == 1 else 'ies'}"


def mx_summary(answer: Answer) -> str:
    if answer.negative == "nxdomain":
        return "NXDOMAIN"
    if answer.negative:
        return "no MX records (implicit MX)"
    records = cast(tuple[MXRecord, ...], answer.records)
    if is_null_mx(records):
        return "null MX (RFC 7505)"
    n = len(records)
    return f"{n} MX record{'s' if n != 1 else ''}"


def why_mx(route: MXRoute, host_index: int, addr_index: int) -> str:
    hosts = route.hosts
    host = hosts[host_index]
    if route.domain.startswith("["):
        base = "address literal"
    elif route.implicit:
        base = "no MX records: the domain's own address (implicit MX, RFC 5321 §5.1)"
    else:
        n = len(hosts)
        lowest = host.preference == hosts[0].preference
        base = f"{'lowest ' if lowest else ''}preference {host.preference} of {n} host"
        base += "s" if n != 1 else ""
        ties = sum(1 for h in hosts if h.preference == host.preference)
        if ties > 1:
            base += f" (order among {ties} of equal preference is random)"
    count = len(host.addresses)
    nth = _ORDINALS[addr_index] if addr_index < len(_ORDINALS) else f"#{addr_index + 1}"
    return f"{base}; {nth} address of {count}"


def flight_detail(name: str, rcpts: int, size: int, result: TransactionResult) -> str:
    if name == "mail_rcpt_data":
        return f"MAIL, {rcpts} RCPT, DATA in one flight (PIPELINING)"
    if name == "mail_rcpt_bdat":
        return f"MAIL, {rcpts} RCPT, BDAT LAST + {size} bytes in one flight (CHUNKING)"
    if name == "data_transfer":
        reply = result.data_reply
        return f"{size} bytes, then {reply}" if reply is not None else f"{size} bytes"
    return "one round trip (no PIPELINING)"


def _extensions(session: Session) -> str:
    n = len(session.capabilities.keywords)
    return f"{n} extension{'s' if n != 1 else ''}" if session.capabilities.esmtp else "HELO"


def _system_lookup(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return " (includes the system's name lookup)"
    return ""


def probe_detail(recipients: int, pipelined: bool) -> str:
    if pipelined:
        how = f"MAIL, {recipients} RCPT, RSET in one flight (PIPELINING)"
    else:
        how = f"MAIL, {recipients} RCPT, RSET: {recipients + 2} round trips (no PIPELINING)"
    return f"{how}; nothing delivered"


def outcome_of(
    result: TransactionResult, recipients: Sequence[str], *, sent: bool
) -> tuple[str, str | None]:
    """The trace's outcome (see trace.OUTCOMES) and error for a probe or a send."""
    if result.mail_reply is not None and not result.mail_reply.ok:
        return "refused", f"sender refused: {result.mail_reply}"
    accepted = [r for r, reply in result.recipients.items() if reply is not None and reply.ok]
    if sent and not result.ok:
        return "refused", str(result.error) if result.error is not None else None
    if len(accepted) == len(recipients):
        return ("delivered" if sent else "accepted"), None
    return ("partial" if accepted else "refused"), None
