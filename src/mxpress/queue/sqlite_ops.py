"""The SQL of the queue's writes, as plain functions of a connection.

They run in the writer thread inside the group transaction (in a savepoint of their
own only when a batch is run again after a failure), and never commit. See
sqlite_schema.py for the meaning of `next_due` and the leases.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
from collections.abc import Sequence

from mxpress.errors import QueueError
from mxpress.queue import sqlite_reads as reads
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.sqlite_schema import IdGenerator
from mxpress.queue.store import (
    AttemptOutcome,
    Lease,
    MessageState,
    NewMessage,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
)

_OPEN = ("pending", "deferred")  # recipients still to deliver
_FINAL = (RecipientState.DELIVERED, RecipientState.BOUNCED)
# VALUES rows per statement: 5 parameters each stays far below SQLite's 32,766.
_ROWS_PER_STATEMENT = 1000


def enqueue(
    conn: sqlite3.Connection,
    message: NewMessage,
    recipients: Sequence[str],
    data: bytes,
    now: float,
    ids: IdGenerator,
    lease: tuple[str, float] | None = None,
) -> str:
    """Insert a message; with `lease` (token, expiry) it is stored already leased."""
    token, expires = lease if lease is not None else (None, None)
    first = recipients[0]
    for _ in range(3):
        message_id = ids.new(now)
        try:
            # The message, its body and its first recipient (the view's trigger).
            conn.execute(
                "INSERT INTO new_message (id, sender, created_at, size, is_bounce, origin,"
                " envid, next_due, lease_token, lease_expires, data, address, domain)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message_id,
                    message.sender,
                    now,
                    len(data),
                    int(message.is_bounce),
                    message.origin,
                    message.envid,
                    now if expires is None else expires,
                    token,
                    expires,
                    data,
                    first,
                    _domain(first),
                ),
            )
        except sqlite3.IntegrityError:
            continue  # another process took this id in the same millisecond
        break
    else:
        raise QueueError("could not allocate a unique message id")
    if len(recipients) > 1:
        conn.executemany(
            "INSERT INTO recipients (message_id, idx, address, domain, state, next_attempt,"
            " updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            [
                (message_id, i, rcpt, _domain(rcpt), now, now)
                for i, rcpt in enumerate(recipients)
                if i
            ],
        )
    return message_id


def enqueue_leased(
    conn: sqlite3.Connection,
    message: NewMessage,
    recipients: Sequence[str],
    data: bytes,
    now: float,
    ids: IdGenerator,
    lease_seconds: float,
) -> Lease:
    """Store and lease in one transaction; the lease is built from what was just written
    (no read back)."""
    token = ids.lease_token()
    expires = now + lease_seconds
    message_id = enqueue(conn, message, recipients, data, now, ids, (token, expires))
    statuses = tuple(
        RecipientStatus(r, RecipientState.PENDING, 0, now, "", "", now) for r in recipients
    )
    queued = QueuedMessage(
        message_id,
        message.sender,
        MessageState.ACTIVE,
        now,
        len(data),
        message.is_bounce,
        message.origin,
        statuses,
        data,
        message.envid,
    )
    return Lease(queued, token, expires, whole=True)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def lease_due(
    conn: sqlite3.Connection, now: float, limit: int, lease_seconds: float
) -> list[Lease]:
    # An index range scan on the partial index: reads `limit` rows, whatever the depth.
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM messages WHERE state = 'active' AND next_due <= ?"
            " ORDER BY next_due LIMIT ?",
            (now, limit),
        )
    ]
    leases = []
    for message_id in ids:
        recipients = reads.recipients_of(
            conn,
            message_id,
            " AND state IN ('pending', 'deferred') AND next_attempt <= ?",
            (now,),
        )
        if not recipients:
            # Nothing due after all (e.g. changed by another process): re-derive next_due.
            refresh(conn, message_id)
            continue
        leases.append(_take(conn, message_id, recipients, now, lease_seconds))
    return leases


def expired(
    conn: sqlite3.Connection,
    now: float,
    max_age: float,
    bounce_max_age: float,
    limit: int,
    lease_seconds: float,
) -> list[Lease]:
    ids: list[str] = []
    for is_bounce, age in ((0, max_age), (1, bounce_max_age)):
        ids += [
            row[0]
            for row in conn.execute(
                "SELECT id FROM messages WHERE state = 'active' AND is_bounce = ?"
                " AND created_at <= ? AND (lease_token IS NULL OR lease_expires <= ?)"
                " ORDER BY created_at LIMIT ?",
                (is_bounce, now - age, now, limit - len(ids)),
            )
        ]
        if len(ids) >= limit:
            break
    leases = []
    for message_id in ids:
        recipients = reads.recipients_of(
            conn, message_id, " AND state IN ('pending', 'deferred')", ()
        )
        if recipients:
            leases.append(_take(conn, message_id, recipients, now, lease_seconds))
    return leases


def _take(
    conn: sqlite3.Connection,
    message_id: str,
    recipients: tuple[RecipientStatus, ...],
    now: float,
    lease_seconds: float,
) -> Lease:
    token = secrets.token_hex(8)
    expires = now + lease_seconds
    conn.execute(
        "UPDATE messages SET lease_token = ?, lease_expires = ?, next_due = ? WHERE id = ?",
        (token, expires, expires, message_id),
    )
    message = reads.get(conn, message_id, with_data=True, recipients=recipients)
    assert message is not None  # selected in this same transaction
    return Lease(message=message, token=token, expires_at=expires)


def record(
    conn: sqlite3.Connection,
    lease: Lease,
    outcomes: Sequence[AttemptOutcome],
    now: float,
    retry: RetryPolicy,
) -> tuple[QueuedMessage, bool]:
    """Apply the outcomes; returns (message, whether the lease was still ours).

    A final state is never undone: if the lease ran out and another worker finished a
    recipient meanwhile, this attempt's news about that recipient is dropped. A lease
    that is still someone else's is left alone.

    One read and at most three writes: this runs once per delivery attempt, and every
    statement costs the writer thread a GIL hand-off, so the new message state is
    derived here from the row just read instead of being read back; and the common
    case, fresh mail whose every recipient is done after one attempt, is two writes."""
    if _ends_all(lease, outcomes) and (done := _record_final(conn, [(lease, outcomes)], now)):
        return done[lease.message.id], True
    message_id = lease.message.id
    rows = conn.execute(
        "SELECT m.lease_token, m.state, r.idx, r.address, r.state, r.attempts,"
        " r.next_attempt, r.last_reply, r.last_host, r.updated_at"
        " FROM messages m JOIN recipients r ON r.message_id = m.id"
        " WHERE m.id = ? ORDER BY r.idx",
        (message_id,),
    ).fetchall()
    if not rows:
        raise QueueError(f"message {message_id} is no longer in the queue (deleted?)")
    token, message_state = rows[0][0], rows[0][1]
    current = {row[3]: list(row[2:]) for row in rows}  # address -> [idx, address, state, ...]
    updates = []
    for outcome in outcomes:
        row = current.get(outcome.recipient)
        if row is None:
            raise QueueError(f"{outcome.recipient!r} is not a recipient of message {message_id}")
        new_state = _outcome_state(outcome)
        if row[2] not in _OPEN:
            continue
        attempts = row[3] + 1
        next_attempt = None
        if new_state is RecipientState.DEFERRED:
            next_attempt = outcome.next_attempt
            if next_attempt is None:
                next_attempt = now + retry.next_delay(attempts)
        row[2:] = [str(new_state), attempts, next_attempt, outcome.reply, outcome.host, now]
        updates.append((*row[2:], message_id, row[0]))
    conn.executemany(
        "UPDATE recipients SET state = ?, attempts = ?, next_attempt = ?, last_reply = ?,"
        " last_host = ?, updated_at = ? WHERE message_id = ? AND idx = ?",
        updates,
    )
    ours = token is None or token == lease.token
    due = [row[4] for row in current.values() if row[2] in _OPEN]
    if not due:
        message_state = str(MessageState.DONE)
        _mark_done(conn, message_id)
    elif ours:
        times = [t for t in due if t is not None]
        conn.execute(
            "UPDATE messages SET lease_token = NULL, lease_expires = NULL, next_due = ?"
            " WHERE id = ?",
            (min(times) if times else None, message_id),
        )
    # Otherwise another worker's lease stands, and with it next_due = its expiry.
    statuses = tuple(
        RecipientStatus(address, RecipientState(state), *rest)
        for _, address, state, *rest in current.values()
    )
    return dataclasses.replace(
        lease.message, state=MessageState(message_state), recipients=statuses, data=None
    ), ours


def record_many(
    conn: sqlite3.Connection,
    attempts: Sequence[tuple[Lease, Sequence[AttemptOutcome]]],
    now: float,
    retry: RetryPolicy,
) -> list[QueuedMessage | QueueError]:
    """`record` for each attempt; a QueueError is that attempt's answer alone.

    The attempts that `_record_final` can take are written together, in three
    statements for the whole group rather than two each: every statement costs the
    writer thread a wait for the GIL while the event loop is busy."""
    final = [(lease, outcomes) for lease, outcomes in attempts if _ends_all(lease, outcomes)]
    grouped = 1 < len(final) <= _ROWS_PER_STATEMENT
    done = _record_final(conn, final, now) if grouped else {}
    out: list[QueuedMessage | QueueError] = []
    for lease, outcomes in attempts:
        message = done.get(lease.message.id)
        if message is not None:
            out.append(message)
            continue
        try:
            out.append(record(conn, lease, outcomes, now, retry)[0])
        except QueueError as exc:
            out.append(exc)
    return out


def _ends_all(lease: Lease, outcomes: Sequence[AttemptOutcome]) -> bool:
    """A lease holding every open recipient, whose attempt delivered or bounced each."""
    return (
        lease.whole
        and [o.recipient for o in outcomes] == [r.recipient for r in lease.message.recipients]
        and all(o.state in _FINAL for o in outcomes)
    )


def _record_final(
    conn: sqlite3.Connection,
    attempts: Sequence[tuple[Lease, Sequence[AttemptOutcome]]],
    now: float,
) -> dict[str, QueuedMessage]:
    """`record` without reading, for attempts that `_ends_all`, if every lease is still
    ours (its token proves no one else touched the message; the body goes with the
    schema's trigger). Else nothing is written and {} returned: each goes its own way.
    One attempt is two writes; several, one read (are all still ours?) and two writes."""
    pairs = ", ".join(["(?, ?)"] * len(attempts))
    keys = [x for lease, _ in attempts for x in (lease.message.id, lease.token)]
    # FROM (VALUES ...) rather than `(id, token) IN (VALUES ...)`: the latter scans.
    if len(attempts) > 1:
        (ours,) = conn.execute(
            f"SELECT count(*) FROM (VALUES {pairs}) AS v"
            " JOIN messages m ON m.id = v.column1 AND m.lease_token = v.column2",
            keys,
        ).fetchone()
        if ours != len(attempts):
            return {}
    marked = conn.execute(
        "UPDATE messages SET state = 'done', next_due = NULL, lease_token = NULL,"
        f" lease_expires = NULL FROM (VALUES {pairs}) AS v"
        " WHERE messages.id = v.column1 AND messages.lease_token = v.column2",
        keys,
    ).rowcount
    if not marked:  # one attempt, and its lease is someone else's now
        return {}
    rows = [
        (lease.message.id, o.recipient, str(o.state), o.reply, o.host)
        for lease, outcomes in attempts
        for o in outcomes
    ]
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        # `state IN` keeps a final state final, as in `record`.
        conn.execute(
            "UPDATE recipients SET state = v.column3, attempts = attempts + 1,"
            " next_attempt = NULL, last_reply = v.column4, last_host = v.column5,"
            f" updated_at = ? FROM (VALUES {', '.join(['(?, ?, ?, ?, ?)'] * len(chunk))}) AS v"
            " WHERE recipients.message_id = v.column1 AND recipients.address = v.column2"
            " AND recipients.state IN ('pending', 'deferred')",
            [now, *(x for row in chunk for x in row)],
        )
    return {lease.message.id: _final(lease.message, outcomes, now) for lease, outcomes in attempts}


def _final(message: QueuedMessage, outcomes: Sequence[AttemptOutcome], now: float) -> QueuedMessage:
    """The message as `_record_final` leaves it."""
    statuses = tuple(
        RecipientStatus(
            o.recipient, RecipientState(o.state), r.attempts + 1, None, o.reply, o.host, now
        )
        for o, r in zip(outcomes, message.recipients, strict=True)
    )
    return dataclasses.replace(message, state=MessageState.DONE, recipients=statuses, data=None)


def _outcome_state(outcome: AttemptOutcome) -> RecipientState:
    try:
        state = RecipientState(outcome.state)
    except ValueError:
        state = RecipientState.PENDING
    if state is RecipientState.PENDING:
        raise QueueError(
            "an attempt's outcome must be delivered, deferred or bounced, "
            f"got {outcome.state!r} for {outcome.recipient!r}"
        )
    return state


def release(conn: sqlite3.Connection, lease: Lease, retry_at: float | None = None) -> None:
    cursor = conn.execute(
        "UPDATE messages SET lease_token = NULL, lease_expires = NULL"
        " WHERE id = ? AND lease_token = ?",
        (lease.message.id, lease.token),
    )
    if not cursor.rowcount:
        return
    if retry_at is not None:
        # Not an attempt (attempts stay as they are): just not due before retry_at.
        conn.execute(
            "UPDATE recipients SET next_attempt = max(coalesce(next_attempt, 0), ?)"
            " WHERE message_id = ? AND state IN ('pending', 'deferred')",
            (retry_at, lease.message.id),
        )
    refresh(conn, lease.message.id)


def refresh(conn: sqlite3.Connection, message_id: str) -> None:
    """Re-derive a message's state and next_due from its recipients and lease."""
    row = conn.execute(
        "SELECT count(*), min(next_attempt) FROM recipients"
        " WHERE message_id = ? AND state IN ('pending', 'deferred')",
        (message_id,),
    ).fetchone()
    if row[0] == 0:
        _mark_done(conn, message_id)
    else:
        conn.execute(
            "UPDATE messages SET next_due = CASE WHEN lease_token IS NULL THEN ?"
            " ELSE lease_expires END WHERE id = ?",
            (row[1], message_id),
        )


def _mark_done(conn: sqlite3.Connection, message_id: str) -> None:
    # The schema's trigger deletes the body (a DSN was built from the lease's copy).
    conn.execute(
        "UPDATE messages SET state = 'done', next_due = NULL, lease_token = NULL,"
        " lease_expires = NULL WHERE id = ?",
        (message_id,),
    )


def set_held(conn: sqlite3.Connection, message_id: str, held: bool) -> bool:
    if held:  # idempotent: True when the message is (now) on hold
        cursor = conn.execute(
            "UPDATE messages SET state = 'held' WHERE id = ? AND state IN ('active', 'held')",
            (message_id,),
        )
        return cursor.rowcount > 0
    cursor = conn.execute(
        "UPDATE messages SET state = 'active' WHERE id = ? AND state = 'held'", (message_id,)
    )
    if cursor.rowcount:
        refresh(conn, message_id)
    return cursor.rowcount > 0


def retry_now(conn: sqlite3.Connection, message_id: str | None, now: float) -> int:
    if message_id is not None:
        count = conn.execute(
            "UPDATE recipients SET next_attempt = ? WHERE message_id = ?"
            " AND state = 'deferred' AND next_attempt > ?",
            (now, message_id, now),
        ).rowcount
        if count:
            refresh(conn, message_id)
        return count
    # Messages first (while the deferred recipients still say who is affected); a
    # message under a live lease keeps next_due = lease expiry.
    conn.execute(
        "UPDATE messages SET next_due = ? WHERE state = 'active' AND next_due > ?"
        " AND lease_token IS NULL AND EXISTS (SELECT 1 FROM recipients r"
        " WHERE r.message_id = messages.id AND r.state = 'deferred' AND r.next_attempt > ?)",
        (now, now, now),
    )
    return conn.execute(
        "UPDATE recipients SET next_attempt = ? WHERE state = 'deferred' AND next_attempt > ?",
        (now, now),
    ).rowcount


def reclaim_leases(conn: sqlite3.Connection) -> int:
    """Void every lease (their holder is gone); each message is due again as its
    recipients say. Returns how many messages were leased."""
    ids = [row[0] for row in conn.execute("SELECT id FROM messages WHERE lease_token IS NOT NULL")]
    conn.execute(
        "UPDATE messages SET lease_token = NULL, lease_expires = NULL WHERE lease_token IS NOT NULL"
    )
    for message_id in ids:
        refresh(conn, message_id)
    return len(ids)


def claim_delay_warning(conn: sqlite3.Connection, message_id: str) -> bool:
    cursor = conn.execute(
        "INSERT OR IGNORE INTO delay_warnings (message_id)"
        " SELECT id FROM messages WHERE id = ? AND state = 'active'",
        (message_id,),
    )
    return cursor.rowcount == 1


def delete(conn: sqlite3.Connection, message_id: str) -> bool:
    cursor = conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
    conn.execute("DELETE FROM message_data WHERE id = ?", (message_id,))
    conn.execute("DELETE FROM recipients WHERE message_id = ?", (message_id,))
    conn.execute("DELETE FROM delay_warnings WHERE message_id = ?", (message_id,))
    return cursor.rowcount > 0


def purge(conn: sqlite3.Connection, before: float, limit: int) -> int:
    ids = [
        (row[0],)
        for row in conn.execute(
            "SELECT id FROM messages WHERE state = 'done' AND id < ? ORDER BY id LIMIT ?",
            (IdGenerator.bound(before), limit),
        )
    ]
    conn.executemany("DELETE FROM messages WHERE id = ?", ids)
    conn.executemany("DELETE FROM recipients WHERE message_id = ?", ids)
    conn.executemany("DELETE FROM delay_warnings WHERE message_id = ?", ids)
    return len(ids)
