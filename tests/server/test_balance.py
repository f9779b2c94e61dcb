"""Connections passed between workers by how many each holds (server/balance.py).

Two submission listeners in the test's event loop stand for two workers: "w0" serves
the listening socket the clients connect to, "w1" only what w0 passes it. The
greeting names the one that answers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from mxpress.server import Submission, SubmissionServer
from mxpress.server.balance import (
    GAP,
    LONG_LIVED,
    SHORT_CLOSES,
    UNAVAILABLE,
    Balancer,
    Handoff,
    HandoffFds,
)

HOST = "127.0.0.1"


class Stored:
    def __init__(self) -> None:
        self.messages: list[Submission] = []

    async def __call__(self, submission: Submission) -> str:
        self.messages.append(submission)
        return f"Q{len(self.messages)}"


@pytest.fixture
def handoff() -> Iterator[Handoff]:
    shared = Handoff(2)
    yield shared
    shared.close()


class Workers:
    def __init__(self, handoff: Handoff) -> None:
        self.listening = socket.create_server((HOST, 0))
        self.port = self.listening.getsockname()[1]
        self.idle = socket.create_server((HOST, 0))  # w1's own: nobody connects to it
        self.stored = [Stored(), Stored()]
        self.balancers = [Balancer(i, handoff.fds) for i in range(2)]
        self.servers = [
            SubmissionServer(
                self.stored[i],
                sock=sock,
                balance=self.balancers[i],
                hostname=f"w{i}",
                trusted_networks=("127.0.0.0/8",),
            )
            for i, sock in enumerate((self.listening, self.idle))
        ]

    async def start(self) -> None:
        # Together: each waits at its start until the other has joined.
        await asyncio.gather(*(server.start() for server in self.servers))

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(grace=1)
        for balancer in self.balancers:
            balancer.close()


@pytest.fixture
async def workers(handoff: Handoff) -> AsyncIterator[Workers]:
    pair = Workers(handoff)
    await pair.start()
    yield pair
    await pair.stop()


Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_burst(port: int, count: int) -> list[tuple[Client, str]]:
    """`count` connections opened at once; each with the name in its greeting."""
    clients = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(count)))
    greetings = await asyncio.gather(*(reader.readline() for reader, _ in clients))
    return [(c, g.decode().split()[1]) for c, g in zip(clients, greetings, strict=True)]


async def command(client: Client, line: bytes) -> bytes:
    reader, writer = client
    writer.write(line + b"\r\n")
    reply = b""
    while reply[3:4] != b" ":
        reply = await reader.readline()
    return reply


async def test_a_burst_is_shared_and_each_client_gets_one_greeting(workers: Workers) -> None:
    clients = await open_burst(workers.port, 10)
    names = [name for _, name in clients]
    # All ten reached w0's socket; it passed on every connection it held GAP more than w1.
    assert sorted(names) == ["w0"] * 5 + ["w1"] * 5
    assert workers.balancers[0].passed == 5 and workers.balancers[1].taken == 5
    assert workers.balancers[1].passed == 0  # nothing passed back
    stats = [s.stats for s in workers.servers]
    assert [(s.active, s.connections, s.passed_on, s.taken_in) for s in stats] == [
        (5, 5, 5, 0),
        (5, 5, 0, 5),
    ]
    assert [workers.balancers[0].board.held(i) for i in range(2)] == [5, 5]
    for client, _ in clients:  # the greeting was the only thing said: the session works
        assert (await command(client, b"EHLO client.test")).startswith(b"250 ")
        assert (await command(client, b"QUIT")).startswith(b"221 ")
        client[1].close()
    for _ in range(50):  # the board follows the closes
        if [workers.balancers[0].board.held(i) for i in range(2)] == [0, 0]:
            break
        await asyncio.sleep(0.02)
    assert [workers.balancers[0].board.held(i) for i in range(2)] == [0, 0]


async def test_a_passed_connection_carries_a_whole_transaction(workers: Workers) -> None:
    clients = await open_burst(workers.port, 2)
    client = next(c for c, name in clients if name == "w1")
    await command(client, b"EHLO client.test")
    assert (await command(client, b"MAIL FROM:<app@example.test>")).startswith(b"250")
    assert (await command(client, b"RCPT TO:<u@example.test>")).startswith(b"250")
    assert (await command(client, b"DATA")).startswith(b"354")
    reply = await command(client, b"From: <app@example.test>\r\nSubject: hi\r\n\r\nHello.\r\n.")
    assert reply.startswith(b"250")
    assert [len(s.messages) for s in workers.stored] == [0, 1]
    assert workers.stored[1].messages[0].peer == HOST
    for c, _ in clients:
        c[1].close()


async def test_nothing_is_passed_to_a_worker_that_stopped(workers: Workers) -> None:
    workers.balancers[1].stop()
    assert workers.balancers[0].board.held(1) == UNAVAILABLE
    clients = await open_burst(workers.port, 6)
    assert [name for _, name in clients] == ["w0"] * 6
    assert workers.balancers[0].passed == 0
    for client, _ in clients:
        client[1].close()


async def test_a_full_inbox_keeps_the_connection_here(handoff: Handoff) -> None:
    """The sending ends are non-blocking: when w1's inbox cannot take another socket,
    w0 serves the connection itself instead of waiting."""
    w0 = Balancer(0, handoff.fds)
    handoff.board.set_held(1, 0)  # w1 "holds nothing" but never reads its inbox
    sent = 0
    with socket.socket() as spare:
        while w0.pass_on(spare, holding=10_000, now=0.0):
            sent += 1
            assert sent < 100_000
    assert sent > 0 and w0.passed == sent
    assert w0.target(holding=10_000, now=0.0) == 1  # still less busy: only the send failed
    w0.close()


def test_the_target_counts_what_is_on_its_way(handoff: Handoff) -> None:
    w0 = Balancer(0, handoff.fds)
    handoff.board.set_held(1, 3)
    assert w0.target(holding=3 + GAP - 1, now=0.0) is None  # within GAP - 1 of each other: stays
    assert w0.target(holding=3 + GAP, now=0.0) == 1
    w0._sent[1] += 2  # two sent, not yet taken in by w1: it counts as holding 5
    assert w0.target(holding=3 + GAP, now=0.0) is None
    assert w0.target(holding=5 + GAP, now=0.0) == 1
    handoff.board.count_received(1, 0)
    handoff.board.count_received(1, 0)  # taken in: held tells the rest
    assert w0.target(holding=3 + GAP, now=0.0) == 1
    w0.close()


def test_the_descriptors_travel_as_one_argument() -> None:
    fds = HandoffFds(7, ((8, 9), (10, 11), (12, 13)))
    assert HandoffFds.from_arg(fds.to_arg()) == fds
    assert fds.fds() == (7, 8, 9, 10, 11, 12, 13)


async def test_a_worker_starts_accepting_once_the_others_have_joined(
    handoff: Handoff, caplog: pytest.LogCaptureFixture
) -> None:
    w0, w1 = Balancer(0, handoff.fds), Balancer(1, handoff.fds)
    loop = asyncio.get_running_loop()
    began = loop.time()
    joining = asyncio.ensure_future(w0.join(lambda sock: None, wait=5))
    await asyncio.sleep(0.2)
    assert not joining.done()  # w1 has not joined: w0 waits
    await w1.join(lambda sock: None, wait=5)
    await asyncio.wait_for(joining, 1)
    assert 0.2 <= loop.time() - began < 1
    w1.stop()  # gone again: the next to join waits only `wait`, then starts alone
    began = loop.time()
    await w0.join(lambda sock: None, wait=0.3)
    assert 0.3 <= loop.time() - began < 1
    assert "workers [1] not started after 0.3 s" in caplog.text
    for balancer in (w0, w1):
        balancer.close()


def test_short_connections_that_close_often_are_not_passed(handoff: Handoff) -> None:
    """A pass costs CPU in both workers; an imbalance of one-message connections is gone
    in milliseconds, so they are left where they were accepted."""
    w0 = Balancer(0, handoff.fds)
    handoff.board.set_held(1, 0)
    assert w0.target(holding=GAP, now=100.0) == 1  # nothing closed yet: passed
    w0.lasted(0.002, now=100.0)  # a health check's probe: one close is not a pattern
    assert w0.target(holding=GAP, now=100.0) == 1
    for i in range(SHORT_CLOSES):
        w0.lasted(0.005, now=100.0 + i / 1000)
    now = 100.0 + SHORT_CLOSES / 1000
    assert w0.short_lived(now) and w0.target(holding=GAP, now=now) is None
    # When they stop closing for a while, a new burst may be a pool's: passed again.
    assert w0.target(holding=GAP, now=now + 4 * LONG_LIVED) == 1
    w0.close()


def test_connections_that_last_are_passed_however_often_they_close(handoff: Handoff) -> None:
    w0 = Balancer(0, handoff.fds)
    handoff.board.set_held(1, 0)
    for i in range(5 * SHORT_CLOSES):
        w0.lasted(30.0, now=100.0 + i / 1000)  # a pool's connections, closing after 30 s
    assert not w0.short_lived(100.1) and w0.target(holding=GAP, now=100.1) == 1
    w0.close()


async def test_a_connection_sent_to_a_worker_that_died_is_served_by_the_next(
    handoff: Handoff,
) -> None:
    """w1 looked free when it died (the supervisor had not marked it yet): w0 passed it a
    connection. The inbox outlives the worker (the supervisor holds it open), so the
    worker started in w1's place greets that client."""
    handoff.board.set_held(1, 0)
    listening = socket.create_server((HOST, 0))
    idle = socket.create_server((HOST, 0))
    balancers = [Balancer(0, handoff.fds), Balancer(1, handoff.fds)]
    w0 = SubmissionServer(Stored(), sock=listening, balance=balancers[0], hostname="w0")
    await w0.start()
    port = listening.getsockname()[1]
    clients = [await asyncio.open_connection(HOST, port) for _ in range(2)]
    first = await clients[0][0].readline()
    assert first.startswith(b"220 w0 ")
    for _ in range(100):  # the second is passed once w0 holds the first
        if w0.stats.passed_on:
            break
        await asyncio.sleep(0.01)
    assert w0.stats.passed_on == 1
    with pytest.raises(TimeoutError):  # nobody reads w1's inbox yet
        await asyncio.wait_for(clients[1][0].readline(), 0.2)
    w1 = SubmissionServer(Stored(), sock=idle, balance=balancers[1], hostname="w1")
    await w1.start()  # the new w1
    greeting = await asyncio.wait_for(clients[1][0].readline(), 5)
    assert greeting.startswith(b"220 w1 ")
    for _, writer in clients:
        writer.close()
    for server in (w0, w1):
        await server.stop(grace=1)
    for balancer in balancers:
        balancer.close()
