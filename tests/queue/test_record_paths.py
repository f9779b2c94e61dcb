"""`record`'s two paths give the same result: the short one (fresh mail, every recipient
ended by one attempt: two writes, no read) and the general one."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from mxpress.queue import AttemptOutcome, MessageState, RecipientState, RetryPolicy
from mxpress.queue import sqlite_ops as ops
from mxpress.queue import sqlite_reads as reads
from mxpress.queue.sqlite_schema import SCHEMA, SCHEMA_VERSION, IdGenerator, connect, ensure_schema
from mxpress.queue.store import Lease, QueuedMessage
from tests.queue.conftest import T0, msg

RCPTS = ("a@example.com", "b@example.net", "c@example.org")


def fresh(conn: sqlite3.Connection, ids: IdGenerator) -> Lease:
    return ops.enqueue_leased(conn, msg(*RCPTS), RCPTS, b"body", T0, ids, 60.0)


def ended(lease: Lease) -> list[AttemptOutcome]:
    states = [RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DELIVERED]
    return [
        AttemptOutcome(r.recipient, state, f"{i}50 reply", "mx.test")
        for i, (r, state) in enumerate(zip(lease.message.recipients, states, strict=True), 2)
    ]


def statements(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


def stored(conn: sqlite3.Connection, message_id: str) -> QueuedMessage:
    message = reads.get(conn, message_id, with_data=True)
    assert message is not None
    return message


def bodies(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT count(*) FROM message_data").fetchone()[0]
    return count


def test_fresh_mail_all_ended_takes_two_writes_and_matches_the_general_path(
    conn: sqlite3.Connection,
) -> None:
    ids, policy = IdGenerator(), RetryPolicy()
    short, general = fresh(conn, ids), fresh(conn, ids)
    assert short.whole and bodies(conn) == 2
    seen = statements(conn)
    got_short, ours_short = ops.record(conn, short, ended(short), T0 + 5, policy)
    writes_short = list(seen)
    seen.clear()
    plain = dataclasses.replace(general, whole=False)
    got_general, ours_general = ops.record(conn, plain, ended(general), T0 + 5, policy)
    # No read and no DELETE of its own (the trigger's shows as its parent UPDATE).
    assert {s.split()[0] for s in writes_short} == {"UPDATE"}
    assert seen[0].startswith("SELECT")  # the general path reads first
    assert ours_short and ours_general
    for got in (got_short, got_general):
        assert got.state is MessageState.DONE and got.data is None
        assert [(r.state, r.attempts, r.last_reply, r.last_host) for r in got.recipients] == [
            (RecipientState.DELIVERED, 1, "250 reply", "mx.test"),
            (RecipientState.BOUNCED, 1, "350 reply", "mx.test"),
            (RecipientState.DELIVERED, 1, "450 reply", "mx.test"),
        ]
    # What each returned is what each stored, and both stored the same.
    assert dataclasses.replace(stored(conn, short.message.id), data=None) == got_short
    assert dataclasses.replace(stored(conn, general.message.id), data=None) == got_general
    assert dataclasses.replace(got_short, id="") == dataclasses.replace(got_general, id="")
    assert bodies(conn) == 0  # the trigger dropped both bodies
    row = conn.execute(
        "SELECT count(*) FROM messages WHERE next_due IS NULL AND lease_token IS NULL"
        " AND lease_expires IS NULL AND state = 'done'"
    ).fetchone()
    assert row[0] == 2


def test_a_deferred_recipient_takes_the_general_path(conn: sqlite3.Connection) -> None:
    lease = fresh(conn, IdGenerator())
    outcomes = ended(lease)
    outcomes[1] = AttemptOutcome(RCPTS[1], RecipientState.DEFERRED, "451 later", "mx.test")
    got, ours = ops.record(conn, lease, outcomes, T0 + 5, RetryPolicy())
    assert ours and got.state is MessageState.ACTIVE
    assert dataclasses.replace(stored(conn, lease.message.id), data=None) == got
    assert stored(conn, lease.message.id).data == b"body"  # still to deliver
    due = conn.execute("SELECT next_due, lease_token FROM messages").fetchone()
    assert due[1] is None and due[0] == got.recipients[1].next_attempt > T0 + 5


def test_a_lease_taken_over_takes_the_general_path(conn: sqlite3.Connection) -> None:
    lease = fresh(conn, IdGenerator())
    # The lease ran out and another worker took the message: its lease must stand.
    [other] = ops.lease_due(conn, lease.expires_at + 1, 10, 60.0)
    outcomes = ended(lease)
    outcomes[1] = AttemptOutcome(RCPTS[1], RecipientState.DEFERRED, "451 later", "mx.test")
    got, ours = ops.record(conn, lease, outcomes, lease.expires_at + 2, RetryPolicy())
    assert not ours and got.state is MessageState.ACTIVE
    row = conn.execute("SELECT lease_token, next_due FROM messages").fetchone()
    assert row == (other.token, other.expires_at)
    assert [r.state for r in stored(conn, lease.message.id).recipients] == [
        RecipientState.DELIVERED,
        RecipientState.DEFERRED,
        RecipientState.DELIVERED,
    ]


def test_files_made_before_the_triggers_get_them(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # a version-1 file as earlier releases wrote it
        for statement in SCHEMA:
            old.execute(statement)
        old.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    old.close()
    conn = connect(path, create=False, busy_timeout=1.0)
    try:
        ensure_schema(conn)
        added = conn.execute("SELECT type, name FROM sqlite_master WHERE type != 'table'")
        assert {("trigger", "message_done_drops_body"), ("trigger", "new_message_stores")} | {
            ("view", "new_message")
        } <= set(added)
        lease = fresh(conn, IdGenerator())
        ops.record(conn, lease, ended(lease), T0 + 1, RetryPolicy())
        assert bodies(conn) == 0
    finally:
        conn.close()
