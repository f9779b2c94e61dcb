"""`Pool`: SMTP sessions pooled per destination.

Rules, in the order an acquire applies them:
- reuse the most recently used idle session of the destination (LIFO keeps the others
  idle long enough to be reaped), closing the ones that are stale (the server hung up or
  spoke unasked: seen without a round trip), too old, too used or idle too long; a NOOP
  checks a session only when it has been idle for `noop_after`;
- else open a new one if both the per-destination and the global limit allow (connects in
  progress count); if only the global limit blocks, close the least recently used idle
  session of another destination to make room;
- else wait, FIFO across the pool, up to `pool_timeout` (then `PoolTimeout`).
A host whose connects fail is in backoff (see `backoff.py`): acquiring for it fails fast
with `ConnectError` unless an idle session is at hand. All bookkeeping is synchronous
between awaits, so one event loop needs no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from mxpress.client.session import Session, SessionOptions, open_session
from mxpress.errors import ConfigError, ConnectError, MxpressError, PoolTimeout
from mxpress.pool.backoff import Backoff, counts_as_host_failure
from mxpress.pool.config import PoolConfig
from mxpress.pool.key import DestinationKey
from mxpress.pool.lease import Lease, close_reason
from mxpress.pool.state import Destination, Entry, Grant, Ledger, Slot, Waiter
from mxpress.pool.stats import POLITE_REASONS, CloseReason, PoolStats
from mxpress.transport.tls import TLSSessionStore

Clock = Callable[[], float]
Opener = Callable[[SessionOptions], Awaitable[Session]]

logger = logging.getLogger(__name__)

_REPR_DESTINATIONS = 8


class Pool:
    """Per-destination session pools sharing global limits. Build one per Mailer/process
    and pass it in; `await pool.close()` when done (it QUITs idle sessions).

    `opener(options)` opens a session (default: `open_session` with this pool's TLS
    session store and clock); `rng` jitters the backoff; `reap_interval` defaults to
    min(idle_timeout / 2, 5 s). Bad arguments raise `ConfigError` naming them.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_per_destination: int = 10,
        max_session_age: float = 300.0,
        max_messages_per_session: int | None = None,
        idle_timeout: float = 30.0,
        noop_after: float = 10.0,
        pool_timeout: float = 30.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
        tls_sessions: TLSSessionStore | None = None,
        clock: Clock = time.monotonic,
        opener: Opener | None = None,
        rng: random.Random | None = None,
        reap_interval: float | None = None,
    ) -> None:
        self.config = PoolConfig(
            max_connections=max_connections,
            max_per_destination=max_per_destination,
            max_session_age=max_session_age,
            max_messages_per_session=max_messages_per_session,
            idle_timeout=idle_timeout,
            noop_after=noop_after,
            pool_timeout=pool_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            reap_interval=reap_interval,
        )
        self._clock = clock
        self._tls_sessions = tls_sessions if tls_sessions is not None else TLSSessionStore()
        self._opener: Opener = opener if opener is not None else self._open
        self._backoff = Backoff(
            initial=float(backoff_initial),
            maximum=float(backoff_max),
            clock=clock,
            rng=rng if rng is not None else random.Random(),
        )
        self._book = Ledger()
        self._seq = itertools.count()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API ------------------------------------------------------------------

    def session(self, options: SessionOptions) -> Lease:
        """`async with pool.session(options) as session:` — released on exit (retired if
        the block raised, unless the server merely refused a message)."""
        return Lease(self, options)

    async def acquire(self, options: SessionOptions) -> Session:
        """A ready session for `options`: reused, or newly opened. Give it back with
        `release`. Raises `PoolTimeout`, or `ConnectError` (also while in backoff)."""
        key = DestinationKey.from_options(options)
        if self._closed:
            raise _closed_error(key)
        dest = self._book.destination(key, self._clock())
        if not dest.idle:
            self._backoff.check((key.host, key.port))  # fail fast: try the next MX host
        self._start_reaper()
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = Waiter(next(self._seq), dest, loop.create_future())
        while True:
            grant = await self._wait(waiter, started)
            if isinstance(grant, Slot):
                return await self._connect(dest, options)
            session = await self._check_out(grant)
            if session is not None:
                return session
            waiter.future = loop.create_future()  # the NOOP failed: back to our place

    def release(self, session: Session, *, reuse: bool = True) -> None:
        """Give back a session from `acquire`. It is pooled only if `reuse` and healthy."""
        self.retire(session, None if reuse else CloseReason.DISCARDED)

    def retire(self, session: Session, reason: CloseReason | None) -> None:
        """Give back a session from `acquire` and close it for `reason` (None: pool it if
        it is healthy, else close it for the reason it is not)."""
        if not self.holds(session):
            raise ConfigError(
                f"{session!r} is not checked out from this pool (released twice, or "
                "acquired elsewhere?)"
            )
        entry = self._book.unlease(session)
        now = self._clock()
        entry.dest.last_activity = now
        if reason is None:
            reason = self._release_unfit(entry, now)
        if reason is None:
            entry.idle_since = now
            self._book.to_idle(entry)
        else:
            self._close(entry, reason)
        self._dispatch()

    def keeps(self, session: Session) -> bool:
        """True if `session`, checked out from this pool, is fit to go on using: released
        now, it would be pooled (open, healthy, neither too old nor used up), and nobody
        waits for the pool (who might need its room)."""
        entry = self._book.leased.get(session)
        if entry is None or self._book.waiters:
            return False
        return self._release_unfit(entry, self._clock()) is None

    def holds(self, session: Session) -> bool:
        """True while `session` is checked out from this pool."""
        return session in self._book.leased

    async def reap(self) -> int:
        """Close idle sessions that are stale, too old or idle too long (QUIT where the
        session is healthy), and wait for every pending QUIT. Returns how many closed."""
        now = self._clock()
        book = self._book
        expired = [(e, r) for e in book.idle_lru if (r := self._idle_unfit(e, now)) is not None]
        for entry, reason in expired:
            book.detach_idle(entry)
            self._close(entry, reason)
        book.prune(now, unused_for=self.config.idle_timeout)
        self._backoff.prune()
        if expired:
            self._dispatch()
        await self._settle()
        return len(expired)

    async def close(self) -> None:
        """Fail the waiters, QUIT idle sessions, stop the reaper. Sessions checked out now
        are closed when released. Safe to call twice."""
        if not self._closed:
            self._closed = True
            for waiter in list(self._book.waiters):
                self._book.dequeue(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(_closed_error(waiter.dest.key))
            for entry in list(self._book.idle_lru):
                self._book.detach_idle(entry)
                self._close(entry, CloseReason.POOL_CLOSED)
            reaper, self._reaper = self._reaper, None
            if reaper is not None:
                reaper.cancel()
                await asyncio.wait({reaper})  # unlike `await reaper`, never raises
        await self._settle()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_per_destination(self) -> int:
        return self.config.max_per_destination

    @property
    def max_connections(self) -> int:
        return self.config.max_connections

    @property
    def stats(self) -> PoolStats:
        """Per destination name ("host:port tls user"): active, idle, connecting, waiting,
        created, reused, closed by reason; `.total` for the whole pool."""
        return self._book.stats()

    def __repr__(self) -> str:
        stats = self.stats
        parts = [
            f"total {stats.total.compact()}",
            f"limits {self.config.max_per_destination}/destination "
            f"{self.config.max_connections} global",
        ]
        shown = list(stats.items())[:_REPR_DESTINATIONS]
        parts += [f"{name}: {s.compact()}" for name, s in shown]
        if len(stats) > _REPR_DESTINATIONS:
            parts.append(f"... {len(stats) - _REPR_DESTINATIONS} more destinations")
        state = " closed" if self._closed else ""
        return f"<Pool{state} " + "; ".join(parts) + ">"

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- acquiring -------------------------------------------------------------------

    async def _open(self, options: SessionOptions) -> Session:
        return await open_session(options, tls_sessions=self._tls_sessions, clock=self._clock)

    async def _wait(self, waiter: Waiter, started: float) -> Grant:
        if self._closed:
            raise _closed_error(waiter.dest.key)
        self._book.enqueue(waiter)
        self._dispatch()
        fut = waiter.future
        if fut.done():
            return fut.result()
        try:
            async with asyncio.timeout_at(started + self.config.pool_timeout):
                return await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                return fut.result()  # granted just as the timeout fired: take it
            self._abandon(waiter)
            waited = asyncio.get_running_loop().time() - started
            raise self._timeout_error(waiter.dest, waited) from None
        except BaseException:
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: Waiter) -> None:
        """The waiting task gave up (cancelled, timed out): a grant made to it at the same
        moment goes back to the pool instead of leaking."""
        self._book.dequeue(waiter)
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            grant = fut.result()
            if isinstance(grant, Slot):
                self._book.unreserve(waiter.dest)
            else:
                self._book.unlease(grant.session)
                self._book.to_idle(grant)  # idle_since unchanged: it was not used
            self._dispatch()

    async def _check_out(self, entry: Entry) -> Session | None:
        """Hand out a granted idle session, NOOP-checked if idle long enough; None (the
        session retired) if the check failed."""
        if self._clock() - entry.idle_since >= self.config.noop_after:
            reason: CloseReason | None = None
            try:
                reply = await entry.session.noop()
                if not reply.ok:
                    reason = CloseReason.NOOP_FAILED
            except (MxpressError, OSError):
                reason = CloseReason.NOOP_FAILED
            except BaseException as exc:
                self.retire(entry.session, close_reason(exc))
                raise
            if self._closed:
                self.retire(entry.session, CloseReason.POOL_CLOSED)
                raise _closed_error(entry.dest.key)
            if reason is not None:
                # No dispatch: the room this frees goes to us when we re-queue.
                self._book.unlease(entry.session)
                self._close(entry, reason)
                return None
        entry.dest.counters.reused += 1
        return entry.session

    async def _connect(self, dest: Destination, options: SessionOptions) -> Session:
        """Open a session on a reserved slot."""
        host = (dest.key.host, dest.key.port)
        try:
            trial = self._backoff.begin(host)
        except ConnectError:
            self._book.unreserve(dest)
            self._dispatch()
            raise
        try:
            session = await self._opener(options)
        except BaseException as exc:
            self._book.unreserve(dest)
            self._backoff.failure(host, exc, trial=trial)
            if counts_as_host_failure(exc):
                dest.counters.connect_failures += 1
            self._dispatch()
            raise
        self._backoff.success(host)
        self._book.opened(dest, session, self._clock())
        if self._closed:
            self.retire(session, CloseReason.POOL_CLOSED)
            raise _closed_error(dest.key)
        return session

    def _timeout_error(self, dest: Destination, waited: float) -> PoolTimeout:
        cfg = self.config
        return PoolTimeout(
            f"no session for {dest.key.address} ({dest.name}) within {waited:.2f} s: "
            f"{dest.active} active + {dest.connecting} connecting + {len(dest.idle)} idle of "
            f"{cfg.max_per_destination} allowed per destination, {self._book.total} of "
            f"{cfg.max_connections} open in the pool, {dest.waiting} others waiting; raise "
            "the limits or pool_timeout, or send less at once",
            host=dest.key.address,
            phase="pool",
        )

    # -- granting --------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Serve waiters in FIFO order with whatever is free now. Called after every
        change that can free something; a later waiter is served only with what no
        earlier one can use (a session of its own destination, or room)."""
        book = self._book
        for waiter in list(book.waiters):
            if waiter.future.done():  # cancelled while queued; its task cleans up
                book.dequeue(waiter)
                continue
            if not book.idle_lru and book.total >= self.config.max_connections:
                return  # nothing idle, no room: nobody can be served
            grant = self._grant_for(waiter.dest)
            if grant is not None:
                book.dequeue(waiter)
                waiter.future.set_result(grant)

    def _grant_for(self, dest: Destination) -> Grant | None:
        entry = self._take_idle(dest)
        if entry is not None:
            return entry
        if dest.open >= self.config.max_per_destination:
            return None
        if self._book.total >= self.config.max_connections:
            victim = next((e for e in self._book.idle_lru if e.dest is not dest), None)
            if victim is None:
                return None
            self._book.detach_idle(victim)
            self._close(victim, CloseReason.EVICTED)
        return self._book.reserve(dest)

    def _take_idle(self, dest: Destination) -> Entry | None:
        """Lease the most recently used idle session that passes the no-round-trip checks;
        close the ones that fail them."""
        now = self._clock()
        while dest.idle:
            entry = next(reversed(dest.idle))
            self._book.detach_idle(entry)
            reason = self._idle_unfit(entry, now)
            if reason is None:
                self._book.lease(entry)
                return entry
            self._close(entry, reason)
        return None

    def _idle_unfit(self, entry: Entry, now: float) -> CloseReason | None:
        cfg = self.config
        if not entry.session.is_usable():
            return CloseReason.STALE
        if now - entry.created_at >= cfg.max_session_age:
            return CloseReason.AGE
        if _used_up(entry.session, cfg.max_messages_per_session):
            return CloseReason.MAX_MESSAGES
        if now - entry.idle_since >= cfg.idle_timeout:
            return CloseReason.IDLE
        return None

    def _release_unfit(self, entry: Entry, now: float) -> CloseReason | None:
        session = entry.session
        if self._closed:
            return CloseReason.POOL_CLOSED
        if session.closed:
            return CloseReason.BROKEN  # the session closed itself: 421, disconnect, ...
        if not session.is_usable():
            return CloseReason.STALE
        if _used_up(session, self.config.max_messages_per_session):
            return CloseReason.MAX_MESSAGES
        if now - entry.created_at >= self.config.max_session_age:
            return CloseReason.AGE
        return None

    # -- closing -----------------------------------------------------------------------

    def _close(self, entry: Entry, reason: CloseReason) -> None:
        """Close a session that is no longer idle nor leased; QUIT only if it is healthy
        (in the background: `reap()` and `close()` wait for it)."""
        self._book.gone(entry, reason, self._clock())
        session = entry.session
        if reason in POLITE_REASONS and session.is_usable():
            try:
                task = asyncio.get_running_loop().create_task(session.quit())
            except RuntimeError:  # no loop (released during shutdown): skip the courtesy
                session.close()
                return
            self._closing.add(task)
            task.add_done_callback(self._quit_done)
        else:
            session.close()

    def _quit_done(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("QUIT of a pooled session failed: %r", task.exception())

    async def _settle(self) -> None:
        while self._closing:
            await asyncio.wait(set(self._closing))

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap_forever(), name="mxpress-pool-reaper"
            )

    async def _reap_forever(self) -> None:
        interval = self.config.reap_every
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:  # a bug must not stop reaping for the life of the process
                logger.exception("pool reaper failed; trying again in %.1f s", interval)


def _used_up(session: Session, max_messages: int | None) -> bool:
    return max_messages is not None and session.messages_sent >= max_messages


def _closed_error(key: DestinationKey) -> MxpressError:
    return MxpressError(f"the pool is closed; no session for {key.name}", host=key.address)
