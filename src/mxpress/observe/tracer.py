"""`run_trace`: resolve, connect, negotiate and probe (or send), timing every phase.

It walks the path delivery takes (resolver → MX hosts in order → pool → session) with
the same objects, so what it shows is what delivery pays. Across `repeat` runs it keeps
ONE resolver (its cache), ONE TLS session store, ONE pool and ONE clock: run 2 shows
what caching (DNS, TLS resumption) and, with `reuse`, pooling save.

Without `send` nothing is delivered: MAIL and RCPT are answered, then RSET and QUIT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from mxpress.client.session import Session, SessionOptions
from mxpress.client.timeouts import Timeouts
from mxpress.delivery.router import domain_of
from mxpress.dns.cache import Answer
from mxpress.dns.mx import MXRecord, MXRoute, is_null_mx
from mxpress.dns.resolver import Resolver
from mxpress.errors import ConfigError, DNSError, MxpressError
from mxpress.message import build_message, to_bytes
from mxpress.observe.explain import (
    cache_state,
    cache_text,
    flight_detail,
    mx_summary,
    outcome_of,
    probe_detail,
    setup_detail,
    why_mx,
)
from mxpress.observe.request import TraceRequest
from mxpress.observe.tls_timing import TimingStore
from mxpress.observe.trace import Trace, TraceBuilder, flight_spans
from mxpress.pool import CloseReason, Pool
from mxpress.protocol.client import Outgoing
from mxpress.transport.tls import TLSSessionStore

Clock = Callable[[], float]

__all__ = ["TraceRequest", "run_trace"]


async def run_trace(
    request: TraceRequest,
    *,
    resolver: Resolver | None = None,
    tls_sessions: TLSSessionStore | None = None,
    clock: Clock = time.perf_counter,
) -> list[Trace]:
    """Trace `request.repeat` runs, one after the other. Failures (DNS, no server
    reachable, a broken session) are recorded in each trace (`outcome` "failed",
    `error`); only a request that cannot run raises (`ConfigError`)."""
    request.check()
    if resolver is None and request.server is None:
        resolver = Resolver(
            request.nameservers, timeout=min(2.0, request.timeout), lifetime=request.timeout
        )
    store = TimingStore(tls_sessions if tls_sessions is not None else TLSSessionStore(), clock)
    pool = Pool(
        max_connections=4,
        max_per_destination=1,
        pool_timeout=request.timeout,
        tls_sessions=store,
        clock=clock,
    )
    tracer = _Tracer(request, resolver, pool, store, clock)
    async with pool:
        return [await tracer.run(n, last=n == request.repeat) for n in range(1, request.repeat + 1)]


@dataclass(frozen=True, slots=True)
class _Candidate:
    options: SessionOptions
    mx: str  # MX host name, or the --server host
    address: str
    why: str

    @property
    def label(self) -> str:
        if self.mx == self.address:
            return self.address
        return f"{self.mx} {self.address}"


class _Tracer:
    def __init__(
        self,
        request: TraceRequest,
        resolver: Resolver | None,
        pool: Pool,
        store: TimingStore,
        clock: Clock,
    ) -> None:
        self.req = request
        self.resolver = resolver
        self.pool = pool
        self.store = store
        self.clock = clock
        self.timeouts = Timeouts.uniform(request.timeout)
        self._known: list[Session] = []  # sessions of earlier runs: reused or new?
        # Built (and its addresses checked) before any network work.
        self.message = self._message() if request.send else b""

    async def run(self, number: int, *, last: bool) -> Trace:
        req = self.req
        now = self.clock()
        b = TraceBuilder(req.target, req.mode, now, run=number)
        if req.server is None:
            candidates, now = await self._route(b, now)
        else:
            candidates = [self._server_candidate(*req.server)]
        if not candidates:
            return b.finish(now)
        chosen, now = await self._connect(b, candidates, now)
        if chosen is None:
            return b.finish(now)
        cand, session = chosen
        now = await self._transact(b, session, cand.label, now)
        now = await self._release(b, session, cand.label, now, last=last)
        return b.finish(now)

    # -- DNS ------------------------------------------------------------------------

    async def _route(self, b: TraceBuilder, t0: float) -> tuple[list[_Candidate], float]:
        """dns_mx (the MX query) then dns_addr (the hosts' A/AAAA), as delivery's
        `resolver.mx()` does them: MX first, then every host's addresses at once."""
        assert self.resolver is not None
        resolver = self.resolver
        domain = domain_of(self.req.recipients[0])
        if domain.startswith("["):  # an address literal routes to itself: no DNS
            route = await resolver.mx(domain)
            t1 = self.clock()
            b.add("dns_mx", t0, t1, "address literal: no DNS lookup")
            return self._candidates(b, route), t1
        stats = resolver.stats
        before = stats.as_dict()
        answer: Answer | None = None
        try:
            answer = await resolver.query(domain, "MX")
        except DNSError as exc:
            t1 = self.clock()
            state = cache_state(before, stats.as_dict())
            b.add("dns_mx", t0, t1, exc.message, ok=False, cache=state)
            return self._fail(b, str(exc)), t1
        t1 = self.clock()
        mid = stats.as_dict()
        mx_state = cache_state(before, mid)
        mx_text = f"{cache_text(mx_state, before, mid)}: {mx_summary(answer)}"
        if answer.negative == "nxdomain":
            b.add("dns_mx", t0, t1, mx_text, ok=False, cache=mx_state)
            return self._fail(b, f"domain {domain} does not exist (NXDOMAIN)"), t1
        error: DNSError | None = None
        try:
            route = await resolver.mx(domain)
        except DNSError as exc:
            error = exc
        t2 = self.clock()
        after = stats.as_dict()
        records = cast(tuple[MXRecord, ...], answer.records)
        if error is not None and not answer.negative and is_null_mx(records):
            # Null MX is the MX answer itself; mx() only read it back from the cache.
            b.add("dns_mx", t0, t2, f"{mx_text}: accepts no mail", ok=False, cache=mx_state)
            return self._fail(b, str(error)), t2
        b.add("dns_mx", t0, t1, mx_text, cache=mx_state)
        addr_state = cache_state(mid, after)
        if error is not None:
            b.add("dns_addr", t1, t2, error.message, ok=False, cache=addr_state)
            return self._fail(b, str(error)), t2
        n = len(route.hosts)
        hosts = f"A/AAAA of {n} host{'s' if n != 1 else ''}"
        b.add(
            "dns_addr", t1, t2, f"{cache_text(addr_state, mid, after)}: {hosts}", cache=addr_state
        )
        return self._candidates(b, route), t2

    def _candidates(self, b: TraceBuilder, route: MXRoute) -> list[_Candidate]:
        req = self.req
        b.trace.mx = [
            {"host": h.name, "preference": h.preference, "addresses": list(h.addresses)}
            for h in route.hosts
        ]
        out: list[_Candidate] = []
        for i, host in enumerate(route.hosts):
            for j, address in enumerate(host.addresses):
                options = SessionOptions(
                    host=address,
                    port=req.port,
                    tls=req.tls,
                    verify=req.verifies,
                    cafile=req.cafile,
                    server_hostname=None if route.domain.startswith("[") else host.name,
                    username=req.username,
                    password=req.password,
                    timeouts=self.timeouts,
                )
                why = why_mx(route, i, j)
                out.append(_Candidate(options, host.name, address, why))
        return out

    def _server_candidate(self, host: str, port: int) -> _Candidate:
        req = self.req
        options = SessionOptions(
            host=host,
            port=port,
            tls=req.tls,
            verify=req.verifies,
            cafile=req.cafile,
            username=req.username,
            password=req.password,
            timeouts=self.timeouts,
        )
        return _Candidate(options, host, host, "given with --server (no DNS: no MX lookup)")

    def _fail(self, b: TraceBuilder, error: str) -> list[_Candidate]:
        b.trace.outcome = "failed"
        b.trace.error = error
        return []

    # -- session ----------------------------------------------------------------------

    async def _connect(
        self, b: TraceBuilder, candidates: list[_Candidate], t0: float
    ) -> tuple[tuple[_Candidate, Session] | None, float]:
        """Try the servers in order, as delivery does; a failure is shown and skipped."""
        now = t0
        failed: list[str] = []
        for i, cand in enumerate(candidates):
            built, context_time = self.store.built, self.store.seconds
            try:
                session = await self.pool.acquire(cand.options)
            except ConfigError:
                raise  # a bad CA file fails every host alike: report it, don't hop
            except (MxpressError, OSError) as exc:
                end = self.clock()
                phase = getattr(exc, "phase", None) or "connect"
                reason = exc.message if isinstance(exc, MxpressError) else str(exc)
                more = " → next" if i + 1 < len(candidates) else ""
                before = "" if phase == "connect" else " (includes the setup before it)"
                shown = reason
                if "in backoff" in reason:  # the pool's message is long; its gist:
                    shown = "in backoff after a failed connect: skipped without trying"
                b.add(phase, now, end, f"{shown}{before}{more}", host=cand.label, ok=False)
                b.trace.attempts.append(
                    {
                        "host": cand.mx,
                        "address": cand.address,
                        "port": cand.options.port,
                        "phase": phase,
                        "error": reason,
                        "ms": round((end - now) * 1e3, 3),
                    }
                )
                failed.append(f"{cand.label} failed ({shown})")
                now = end
                continue
            end = self.clock()
            context = self.store.seconds - context_time if self.store.built > built else 0.0
            self._record_session(b, cand, session, now, end, failed, context)
            return (cand, session), end
        self._fail(b, "no server could be reached: " + "; ".join(failed))
        return None, now

    def _record_session(
        self,
        b: TraceBuilder,
        cand: _Candidate,
        session: Session,
        start: float,
        end: float,
        failed: list[str],
        context: float,
    ) -> None:
        trace = b.trace
        why = cand.why if not failed else f"after {'; '.join(failed)}: {cand.why}"
        trace.chosen = {
            "host": cand.mx,
            "address": cand.address,
            "port": cand.options.port,
            "why": why,
        }
        reused = any(s is session for s in self._known)
        trace.session = "reused" if reused else "new"
        if not reused:
            self._known.append(session)
        info = session.tls_info
        if info is not None:
            trace.tls = {
                "version": info.version,
                "cipher": info.cipher,
                "resumed": info.resumed,
                "verified": cand.options.verify,
            }
        trace.capabilities = [f"{k} {v}".strip() for k, v in session.capabilities.keywords.items()]
        if reused:
            b.add("pool", start, end, "reused an idle pooled session", host=cand.label)
            return
        # The session measured its own setup steps (durations, in the order they ran);
        # what is left of the acquire is the pool's part: bookkeeping, waiting for a slot.
        steps = list(session.timings.items())
        if context and "tls" in session.timings:
            # Built right before the handshake (its time is outside the "tls" timing).
            at = [name for name, _ in steps].index("tls")
            steps.insert(at, ("tls_context", context))
        pool_time = max(0.0, (end - start) - sum(s for _, s in steps))
        b.add(
            "pool", start, start + pool_time, "no idle session: opened a new one", host=cand.label
        )
        b.add_sequence(
            start + pool_time,
            [
                (name, s, setup_detail(name, session, cand.options, server=cand.mx == cand.address))
                for name, s in steps
            ],
            host=cand.label,
        )

    # -- the transaction ------------------------------------------------------------------

    async def _transact(self, b: TraceBuilder, session: Session, host: str, t0: float) -> float:
        req = self.req
        trace = b.trace
        rcpts = list(req.recipients)
        if not rcpts:
            trace.outcome = "connected"
            return t0
        pipelined = session.capabilities.pipelining
        data = self.message
        try:
            if req.send:
                result = (await session.send_many([Outgoing(req.sender, rcpts, data)]))[0]
            else:
                result = await session.probe(req.sender, rcpts)
        except (MxpressError, OSError) as exc:
            t1 = self.clock()
            name = "mail_rcpt_data" if req.send and pipelined else "mail_rcpt"
            reason = exc.message if isinstance(exc, MxpressError) else str(exc)
            b.add(name, t0, t1, f"session broke: {reason}", host=host, ok=False)
            self._fail(b, str(exc))
            return t1
        t1 = self.clock()
        if req.send:
            spans = flight_spans(
                result.timings, t1 - t0, pipelined=pipelined, body_sent=result.body_sent
            )
            b.add_sequence(
                t0,
                [(n, s, flight_detail(n, len(rcpts), len(data), result)) for n, s in spans],
                host=host,
            )
        else:
            b.add("mail_rcpt", t0, t1, probe_detail(len(rcpts), pipelined), host=host)
        trace.recipients = {
            r: (str(reply) if reply is not None else None) for r, reply in result.recipients.items()
        }
        trace.outcome, trace.error = outcome_of(result, rcpts, sent=req.send)
        return t1

    def _message(self) -> bytes:
        if self.req.message is not None:
            return self.req.message
        msg = build_message(
            self.req.sender,
            list(self.req.recipients),
            subject="mxpress trace",
            text="A test message sent by `mxpress trace --send`.\n",
        )
        return to_bytes(msg)

    async def _release(
        self, b: TraceBuilder, session: Session, host: str, t0: float, *, last: bool
    ) -> float:
        if self.req.reuse and not last and not session.closed:
            self.pool.release(session)  # stays open for the next run, as delivery keeps it
            return t0
        if session.closed:  # broke during the transaction: nothing to say QUIT to
            self.pool.retire(session, CloseReason.BROKEN)
            return t0
        await session.quit()
        t1 = self.clock()
        b.add("quit", t0, t1, "QUIT, then close", host=host)
        self.pool.retire(session, CloseReason.DISCARDED)
        return t1
