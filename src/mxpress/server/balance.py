"""Spreading SMTP connections over the relay's workers by how many each one holds.

The workers accept on one listening socket, made by the supervisor: the worker that is
free first takes the next connection. That balances a connection per message, but not
a burst: uvloop accepts every waiting connection in one go, so 20 pooled connections
opened at once can all land on one worker and stay there for the whole run.

So each worker publishes how many connections it holds on a board (a small file mapped
by every worker), and a worker that has just accepted a connection while holding `GAP`
more than another passes the socket to that one (SCM_RIGHTS over its inbox) before
saying anything: the client sees one greeting, from the worker that serves it.

- Each board entry has one writer: `held[i]` and `received[i][j]` (how many worker i got
  from worker j) are written by worker i alone. A sender counts what it has sent, so
  what is on its way still counts against the receiver.
- A worker that stops, or dies (the supervisor marks it), shows `UNAVAILABLE`: nothing is
  passed to it. Sockets sent just before remain in its inbox, which the supervisor
  keeps open: the worker started in its place serves them.
- A full inbox, or any error sending, keeps the connection where it is.
- The workers start accepting together (`join`): the listening socket takes
  connections from the moment the supervisor made it, and the first worker up would
  otherwise take every one waiting. Connections are only passed when they are new, so
  20 pooled connections opened at the start would then stay on one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import mmap
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# A worker passes a new connection on when it would hold GAP more than another (so the
# workers stay within one of each other), if the connections here last: a pass costs
# ~100 µs of CPU in the two workers (with a third of the connections passed, the relay
# spent 34-43 µs more per message), and an imbalance of short connections
# (one message each) is gone in milliseconds, while that of a client's pool lasts as
# long as the pool. So connections count as short-lived, and are not passed, only
# while they close often (a decaying count of closes, halved every LONG_LIVED, of at
# least SHORT_CLOSES: not a health check's probe) after lasting less than LONG_LIVED
# on average. Short ones balance themselves: the worker with time to spare accepts.
GAP = 2
LONG_LIVED = 1.0  # seconds
SHORT_CLOSES = 10
_AVERAGE = 0.1  # weight of the latest close in the moving average of lifetimes
UNAVAILABLE = 1 << 40  # the board's count for a worker that is stopped or dead
JOIN_WAIT = 10.0  # seconds a worker waits at its start for the others (see join())
_WORD = 8


@dataclass(frozen=True, slots=True)
class HandoffFds:
    """The descriptors the supervisor makes and every worker inherits: the board, and
    each worker's inbox as (receiving end, sending end)."""

    board: int
    inboxes: tuple[tuple[int, int], ...]

    def to_arg(self) -> str:
        return ",".join([str(self.board), *(f"{r}/{s}" for r, s in self.inboxes)])

    @classmethod
    def from_arg(cls, arg: str) -> HandoffFds:
        board, *inboxes = arg.split(",")
        pairs = tuple((int(r), int(s)) for r, s in (item.split("/") for item in inboxes))
        return cls(int(board), pairs)

    def fds(self) -> tuple[int, ...]:
        return (self.board, *(fd for pair in self.inboxes for fd in pair))


class Handoff:
    """The supervisor's side: makes the board and the inboxes, and marks dead workers."""

    def __init__(self, workers: int) -> None:
        # Open for this process's life, and unlinked: gone with the last descriptor.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115
        self._file.truncate(board_size(workers))
        self._inboxes = [
            socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(workers)
        ]
        for _receiving, sending in self._inboxes:
            sending.setblocking(False)  # shared by every worker: a full inbox never blocks
        self.fds = HandoffFds(
            self._file.fileno(), tuple((r.fileno(), s.fileno()) for r, s in self._inboxes)
        )
        self.board = Board(self.fds.board, workers)
        for index in range(workers):
            self.board.set_held(index, UNAVAILABLE)

    def mark_dead(self, index: int) -> None:
        self.board.set_held(index, UNAVAILABLE)

    def close(self) -> None:
        self.board.close()
        for pair in self._inboxes:
            for sock in pair:
                sock.close()
        self._file.close()


def board_size(workers: int) -> int:
    return _WORD * (workers + workers * workers)


class Board:
    """The shared counts: held[i] at i, received[i][j] at workers + i * workers + j."""

    def __init__(self, fd: int, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(fd, board_size(workers))
        self._words = memoryview(self._map).cast("q")

    def held(self, index: int) -> int:
        return self._words[index]

    def set_held(self, index: int, count: int) -> None:
        self._words[index] = count

    def received(self, index: int, sender: int) -> int:
        return self._words[self.workers + index * self.workers + sender]

    def count_received(self, index: int, sender: int) -> None:
        self._words[self.workers + index * self.workers + sender] += 1

    def close(self) -> None:
        self._words.release()
        self._map.close()


Arrival = Callable[[socket.socket], None]


class Balancer:
    """One worker's side: publishes what it holds, passes connections on, takes them in."""

    def __init__(self, index: int, fds: HandoffFds) -> None:
        self.index = index
        self.board = Board(fds.board, len(fds.inboxes))
        self._inbox = socket.socket(fileno=os.dup(fds.inboxes[index][0]))
        self._inbox.setblocking(False)
        self._sending = [socket.socket(fileno=os.dup(s)) for _r, s in fds.inboxes]
        self._others = [i for i in range(len(fds.inboxes)) if i != index]
        # Sent to each worker so far; seeded from the board so that a restarted worker
        # does not count what its predecessor sent as still on its way.
        self._sent = [self.board.received(i, index) for i in range(len(fds.inboxes))]
        self._tag = index.to_bytes(2, "big")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifetime = 0.0  # moving average of connections' lifetimes, seconds
        self._closes = 0.0  # decaying count of closes, as of _last_close
        self._last_close = 0.0  # monotonic
        self.passed = 0  # connections passed on
        self.taken = 0  # connections taken in from the others

    async def join(self, arrival: Arrival, wait: float = JOIN_WAIT) -> None:
        """Serve the inbox (`arrival` gets every socket passed here), then wait until
        every worker has joined, up to `wait` seconds: the workers start accepting
        together, so that the connections waiting at the start are shared too."""
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self._inbox.fileno(), self._read_inbox, arrival)
        self.board.set_held(self.index, 0)
        deadline = loop.time() + wait
        while missing := [i for i in self._others if self.board.held(i) == UNAVAILABLE]:
            if loop.time() >= deadline:
                logger.warning("balance: workers %s not started after %.1f s", missing, wait)
                return
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        """No more connections passed here. Any already in the inbox wait there (the
        supervisor keeps it open) for a worker started in this one's place."""
        self.board.set_held(self.index, UNAVAILABLE)
        if self._loop is not None:
            self._loop.remove_reader(self._inbox.fileno())
            self._loop = None
            logger.info(
                "balance: worker %d passed %d connections on, took %d in",
                self.index,
                self.passed,
                self.taken,
            )

    def close(self) -> None:
        self.stop()
        self._inbox.close()
        for sock in self._sending:
            sock.close()
        self.board.close()

    def held(self, count: int) -> None:
        """This worker now holds `count` connections."""
        self.board.set_held(self.index, count)

    def lasted(self, seconds: float, now: float) -> None:
        """A connection held here closed after `seconds`; `now` is time.monotonic()."""
        self._lifetime += (seconds - self._lifetime) * _AVERAGE
        self._closes = self._closes_at(now) + 1
        self._last_close = now

    def _closes_at(self, now: float) -> float:
        return self._closes * math.exp2(-(now - self._last_close) / LONG_LIVED)

    def short_lived(self, now: float) -> bool:
        """Whether connections here close often, after less than LONG_LIVED (see GAP)."""
        return self._lifetime < LONG_LIVED and self._closes_at(now) >= SHORT_CLOSES

    def target(self, holding: int, now: float) -> int | None:
        """The worker to pass a new connection to, if this one holds `holding` with it
        and another holds `GAP` fewer (counting what is on its way there), and the
        connections here last: see GAP."""
        if self.short_lived(now):
            return None
        board, best, least = self.board, None, holding - GAP + 1
        for other in self._others:
            on_way = self._sent[other] - board.received(other, self.index)
            load = board.held(other) + max(on_way, 0)
            if load < least:
                best, least = other, load
        return best

    def pass_on(self, sock: socket.socket, holding: int, now: float) -> bool:
        """Send `sock` (just accepted, not yet greeted) to a less busy worker if there is
        one; True if sent (the caller then closes its copy)."""
        other = self.target(holding, now)
        if other is None:
            return False
        try:
            socket.send_fds(self._sending[other], [self._tag], [sock.fileno()])
        except OSError:  # inbox full (BlockingIOError) or gone: keep it here
            return False
        self._sent[other] += 1
        self.passed += 1
        return True

    def _read_inbox(self, arrival: Arrival) -> None:
        while True:
            try:
                tag, fds, _flags, _addr = socket.recv_fds(self._inbox, 2, 8)
            except (BlockingIOError, InterruptedError):
                return
            sender = int.from_bytes(tag, "big") if len(tag) == 2 else -1
            for fd in fds:
                self.taken += 1
                sock = socket.socket(fileno=fd)
                try:
                    arrival(sock)  # counts it as held here...
                except Exception:  # one bad socket must not stop the inbox
                    logger.exception("balance: a connection passed here could not be served")
                    with contextlib.suppress(OSError):
                        sock.close()
                if 0 <= sender < self.board.workers:  # ... so no longer on its way
                    self.board.count_received(self.index, sender)
