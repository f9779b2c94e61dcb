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


def test_a_group_of_ended_attempts_is_three_statements_and_stores_what_record_would(
    conn: sqlite3.Connection,
) -> None:
    ids, policy = IdGenerator(), RetryPolicy()
    group = [fresh(conn, ids) for _ in range(5)]
    single = fresh(conn, ids)
    deferred = fresh(conn, ids)
    later = ended(deferred)
    later[1] = AttemptOutcome(RCPTS[1], RecipientState.DEFERRED, "451 later", "mx.test")
    attempts = [(lease, ended(lease)) for lease in group] + [(deferred, later)]
    seen = statements(conn)
    got = ops.record_many(conn, attempts, T0 + 5, policy)
    # The five ended ones: one read and two writes together; the deferred one: its own.
    # (A trigger's statements show as their parent's text: count distinct texts.)
    assert len({s for s in seen if "FROM (VALUES" in s}) == 3
    rest = [s for s in seen if "FROM (VALUES" not in s]
    assert rest[0].startswith("SELECT")  # the general path's read, for the deferred one
    alone, _ = ops.record(conn, single, ended(single), T0 + 5, policy)
    for lease, message in zip(group, got[:5], strict=True):
        assert isinstance(message, QueuedMessage)
        assert dataclasses.replace(stored(conn, lease.message.id), data=None) == message
        assert dataclasses.replace(message, id="") == dataclasses.replace(alone, id="")
    assert isinstance(got[5], QueuedMessage) and got[5].state is MessageState.ACTIVE
    assert bodies(conn) == 1  # only the deferred message keeps its body


def test_a_group_with_a_lease_taken_over_goes_one_by_one(conn: sqlite3.Connection) -> None:
    ids, policy = IdGenerator(), RetryPolicy()
    mine, lost = fresh(conn, ids), fresh(conn, ids)
    conn.execute("UPDATE messages SET lease_token = 'other' WHERE id = ?", (lost.message.id,))
    got = ops.record_many(conn, [(mine, ended(mine)), (lost, ended(lost))], T0 + 5, policy)
    assert [m.state for m in got if isinstance(m, QueuedMessage)] == [
        MessageState.DONE,
        MessageState.DONE,  # the news is recorded (the general path) ...
    ]
    token = conn.execute("SELECT lease_token FROM messages WHERE id = ?", (lost.message.id,))
    assert token.fetchone() == (None,)  # ... done, so no lease is left to stand


def test_a_group_larger_than_one_statement_holds(conn: sqlite3.Connection) -> None:
    ids, policy = IdGenerator(), RetryPolicy()
    many = tuple(f"r{i}@example.com" for i in range(700))  # 1,400 rows: two statements
    leases = [ops.enqueue_leased(conn, msg(*many), many, b"b", T0, ids, 60.0) for _ in range(2)]
    attempts = [
        (lease, [AttemptOutcome(r, RecipientState.DELIVERED, "250 ok", "mx") for r in many])
        for lease in leases
    ]
    got = ops.record_many(conn, attempts, T0 + 5, policy)
    assert all(isinstance(m, QueuedMessage) and m.state is MessageState.DONE for m in got)
    states = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    assert states == [("delivered", 1400)]
