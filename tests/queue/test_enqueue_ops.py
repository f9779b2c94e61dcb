"""`enqueue` stores a message, its body and its first recipient in one statement (the
`new_message` view's trigger); the rest of the recipients after it."""

from __future__ import annotations

import sqlite3

import pytest

from mxpress.errors import QueueError
from mxpress.queue import sqlite_ops as ops
from mxpress.queue import sqlite_reads as reads
from mxpress.queue.sqlite_schema import IdGenerator
from tests.queue.conftest import T0, msg


class Replaying(IdGenerator):
    """Hands out the given ids first (to collide on purpose), then fresh ones."""

    def __init__(self, *ids: str) -> None:
        super().__init__()
        self.queued = list(ids)

    def new(self, now: float) -> str:
        return self.queued.pop(0) if self.queued else super().new(now)


def counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_data),"
        " (SELECT count(*) FROM recipients)"
    ).fetchone()
    return row[0], row[1], row[2]


def test_one_statement_stores_message_body_and_first_recipient(conn: sqlite3.Connection) -> None:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    rcpts = ("a@example.com", "b@Example.NET", "c@example.org")
    message_id = ops.enqueue(conn, msg(*rcpts), rcpts, b"body", T0, IdGenerator())
    conn.set_trace_callback(None)
    assert seen[0].startswith("INSERT INTO new_message")
    assert not any(s.startswith("INSERT INTO messages") for s in seen)  # not from Python
    stored = reads.get(conn, message_id, with_data=True)
    assert stored is not None and stored.data == b"body" and stored.size == 4
    assert [r.recipient for r in stored.recipients] == list(rcpts)
    domains = conn.execute("SELECT domain FROM recipients ORDER BY idx").fetchall()
    assert [d[0] for d in domains] == ["example.com", "example.net", "example.org"]
    assert counts(conn) == (1, 1, 3)


def test_a_taken_id_is_retried_and_nothing_is_half_stored(conn: sqlite3.Connection) -> None:
    first = ops.enqueue(conn, msg(), ("a@example.com",), b"one", T0, IdGenerator())
    second = ops.enqueue(
        conn, msg(), ("b@example.com",), b"two", T0, Replaying(first, first)
    )  # two collisions, then a fresh id
    assert second != first and counts(conn) == (2, 2, 2)
    with pytest.raises(QueueError, match="unique message id"):
        ops.enqueue(conn, msg(), ("c@example.com",), b"three", T0, Replaying(*[first] * 3))
    assert counts(conn) == (2, 2, 2)  # the failed attempts left no body nor recipient
    stored = reads.get(conn, first, with_data=True)
    assert stored is not None and stored.data == b"one"


def test_lease_tokens_differ_within_and_across_generators(conn: sqlite3.Connection) -> None:
    # A token proves who holds a lease: no two holders, in one process or two, share one.
    first, second = IdGenerator(), IdGenerator()
    leases = [
        ops.enqueue_leased(conn, msg("a@example.com"), ("a@example.com",), b"x", T0, ids, 60.0)
        for ids in (first, first, second, second)
    ]
    tokens = [lease.token for lease in leases]
    assert len(set(tokens)) == 4
    stored = {row[0] for row in conn.execute("SELECT lease_token FROM messages")}
    assert stored == set(tokens)


def test_ids_sort_by_arrival_and_two_generators_start_apart() -> None:
    # One generator: ids grow within a millisecond (a frozen clock) and across them.
    ids = IdGenerator()
    made = [ids.new(T0) for _ in range(5)] + [ids.new(T0 + 0.001), ids.new(T0 + 1)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in made)
    assert made[0][:12] == made[4][:12] == f"{int(T0 * 1000):012x}"
    # Two generators (two processes on one file) in the same millisecond: each count
    # starts at its own random point, so their ids differ (equal odds: 2**-31 a pair).
    starts = {IdGenerator().new(T0)[12:] for _ in range(20)}
    assert len(starts) == 20
