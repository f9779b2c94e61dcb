"""Pipelining across messages from independent senders.

Concurrent sends to the same destination queue here. A drainer task holds one pooled
session and sends everything queued as one pipelined stream (`Session.stream`), so a
stream of messages costs about one round trip each instead of two, whoever sent them.
Up to the pool's per-destination limit of drainers run at once.

A drainer whose queue ran empty keeps its session for `linger` seconds, waiting for more:
senders that come one after another (the relay hands over each group commit's messages)
then find a drainer with a session in hand, instead of each paying for a task, a pool
acquire and a release of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mxpress.client.session import Session, SessionOptions
from mxpress.errors import MxpressError
from mxpress.pool import Pool
from mxpress.pool.key import DestinationKey
from mxpress.protocol.client import Outgoing, TransactionResult

Clock = Callable[[], float]

# Long enough to bridge the gap between a relay's group commits (a few ms under load),
# short enough that an idle destination's sessions go back to the pool at once.
DEFAULT_LINGER = 0.02


@dataclass(slots=True)
class Delivery:
    """What became of one queued message on one server."""

    result: TransactionResult | None = None
    error: MxpressError | None = None
    host: str = ""
    ip: str | None = None  # the address the session is connected to
    in_session: bool = False  # False: no session could be had (try the next server)
    body_sent: bool = False  # with an error: the body may have reached the server
    queued: float = 0.0  # seconds it waited for a session to take it
    # Pool wait and session setup phases, for the first message of a session only.
    setup: dict[str, float] | None = None
    new_session: bool = False
    tls_resumed: bool | None = None  # for a new session: resumed TLS? (None: no TLS)


class _Group:
    """The messages of one `submit` call: one future for all, so a caller with many
    messages costs one task wake-up, not one per message."""

    __slots__ = ("future", "remaining", "results")

    def __init__(self, size: int, future: asyncio.Future[list[Delivery]]) -> None:
        self.results: list[Delivery | None] = [None] * size
        self.remaining = size
        self.future = future

    def resolve(self, index: int, delivery: Delivery) -> None:
        if self.results[index] is not None or self.future.done():
            return
        self.results[index] = delivery
        self.remaining -= 1
        if not self.remaining:
            self.future.set_result([d for d in self.results if d is not None])


@dataclass(slots=True)
class _Item:
    message: Outgoing
    group: _Group
    index: int
    queued_at: float

    @property
    def abandoned(self) -> bool:
        """Its sender gave up (cancelled) or it was already answered."""
        return self.group.future.done() or self.group.results[self.index] is not None


@dataclass(slots=True)
class _Queue:
    pending: deque[_Item] = field(default_factory=deque)
    drainers: int = 0  # lingering ones included
    # Lingering drainers' wake-ups (True: there is work; False: give the session back).
    lingering: list[asyncio.Future[bool]] = field(default_factory=list)


class Batcher:
    """Per-destination queues drained over pooled sessions."""

    def __init__(
        self, pool: Pool, *, clock: Clock = time.perf_counter, linger: float = DEFAULT_LINGER
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._linger = linger
        self._queues: dict[DestinationKey, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, options: SessionOptions, messages: Sequence[Outgoing]) -> list[Delivery]:
        """Queue messages for one destination; their deliveries, in order."""
        if not messages:
            return []
        key = DestinationKey.from_options(options)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        loop = asyncio.get_running_loop()
        group = _Group(len(messages), loop.create_future())
        now = self._clock()
        queue.pending.extend(_Item(m, group, i, now) for i, m in enumerate(messages))
        # A drainer sends one message per round trip: a message that finds every drainer
        # busy would wait a round trip for one, so each new message wakes a lingering
        # drainer (the latest: the others may run out) or brings a new one (up to the
        # pool's per-destination limit; the pool reuses idle sessions first).
        wanted = len(messages)
        lingering = queue.lingering
        while wanted and lingering:
            wake = lingering.pop()
            if not wake.done():  # else its timer fired (or it was cancelled) just now
                wake.set_result(True)
                wanted -= 1
        limit = min(self._pool.max_per_destination, queue.drainers + wanted)
        while queue.drainers < limit:
            queue.drainers += 1
            task = loop.create_task(self._drain(key, queue, options))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await group.future

    async def _drain(self, key: DestinationKey, queue: _Queue, options: SessionOptions) -> None:
        try:
            while _live(queue.pending):
                if not await self._serve(queue, options):
                    return
        except BaseException as exc:
            # Cancelled (the Mailer closes) or a bug: nobody may wait forever.
            if queue.drainers == 1:
                _fail_all(queue.pending, Delivery(error=_as_error(exc)))
            raise
        finally:
            queue.drainers -= 1
            if not queue.drainers and not queue.pending:
                self._queues.pop(key, None)

    async def _serve(self, queue: _Queue, options: SessionOptions) -> bool:
        """Hold one session and stream queued messages through it until the queue is
        empty. False: no session could be had."""
        clock = self._clock
        start = clock()
        session: Session | None = None
        inflight: dict[int, tuple[_Item, float]] = {}
        try:
            async with self._pool.session(options) as session:
                # The first message waited for the pool (and for setup, if new).
                first = {"pool": clock() - start}
                new = session.uses == 0
                if new:
                    first.update(session.timings)
                host, ip = session.host, session.peer_ip
                tls_resumed = session.tls_info.resumed if session.tls_info else None
                taken = 0  # messages the current stream took: its indexes count from 0
                fresh = True  # the next result is this lease's first

                def source() -> list[Outgoing]:
                    # One at a time: the pipeline takes one message per flight, and what
                    # this session does not take yet stays free for the other drainers.
                    nonlocal taken
                    if not _live(queue.pending):
                        return []
                    item = queue.pending.popleft()
                    inflight[taken] = (item, clock())
                    taken += 1
                    return [item.message]

                def on_result(index: int, result: TransactionResult) -> None:
                    nonlocal fresh
                    item, taken_at = inflight.pop(index)
                    opening, fresh = fresh, False
                    delivery = Delivery(
                        result,
                        host=host,
                        ip=ip,
                        in_session=True,
                        queued=max(0.0, taken_at - item.queued_at),
                        setup=first if opening else None,
                        new_session=new and opening,
                        tls_resumed=tls_resumed if new and opening else None,
                    )
                    _resolve(item, delivery)

                while True:
                    while _live(queue.pending):
                        taken = 0
                        await session.stream(source, on_result)
                    if not await self._more(queue, session):
                        break
        except BaseException as exc:
            if session is None:  # no session: let the next server have a go
                if isinstance(exc, MxpressError):
                    if queue.drainers == 1:  # no other drainer will serve these
                        _fail_all(queue.pending, Delivery(error=exc))
                    return False
                raise
            # The session broke: each message in flight learns whether its body went out.
            error = _as_error(exc)
            sent = {i: r.body_sent for i, r in session.last_incomplete}
            for index, (item, _) in inflight.items():
                _resolve(
                    item,
                    Delivery(
                        error=error,
                        host=session.host,
                        ip=session.peer_ip,
                        in_session=True,
                        body_sent=sent.get(index, True),
                    ),
                )
            if not isinstance(exc, MxpressError):
                raise
        return True

    async def _more(self, queue: _Queue, session: Session) -> bool:
        """Linger with the session for more work. False: none came (or the session is no
        longer fit to keep), give it back."""
        if self._linger <= 0 or not self._pool.keeps(session):
            return False
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[bool] = loop.create_future()
        queue.lingering.append(wake)
        timer = loop.call_later(self._linger, _expire, wake)
        try:
            more = await wake
        except asyncio.CancelledError:
            # The batcher closes: nothing is in flight on a lingering session, so it goes
            # back to the pool intact (the pool QUITs it when it closes), not retired.
            self._pool.release(session)
            raise
        finally:
            timer.cancel()
            if wake in queue.lingering:  # not popped by a submit: the timer, or cancelled
                queue.lingering.remove(wake)
        # The wait may have outlived the session (the server hung up, a 421): the work
        # goes to a drainer with a session that is fit (this one, after a new acquire).
        return more and self._pool.keeps(session)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _as_error(exc: BaseException) -> MxpressError:
    if isinstance(exc, MxpressError):
        return exc
    return MxpressError(f"delivery stopped: {exc!r}")


def _live(pending: deque[_Item]) -> bool:
    """Drop items whose sender gave up (cancelled); True if any remain."""
    while pending and pending[0].abandoned:
        pending.popleft()
    return bool(pending)


def _expire(wake: asyncio.Future[bool]) -> None:
    if not wake.done():
        wake.set_result(False)


def _resolve(item: _Item, delivery: Delivery) -> None:
    item.group.resolve(item.index, delivery)


def _fail_all(pending: deque[_Item], delivery: Delivery) -> None:
    while pending:
        _resolve(pending.popleft(), delivery)
