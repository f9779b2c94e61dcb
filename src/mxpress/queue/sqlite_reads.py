"""The SQL of the queue's reads, as plain functions of a connection.

They run in the reader thread inside one read transaction (a consistent snapshot), and
in the writer thread when a write returns the message it changed.
"""

from __future__ import annotations

import sqlite3

from mxpress.errors import QueueError
from mxpress.queue.store import (
    MessageState,
    QueueCounts,
    QueuedMessage,
    QueueFilter,
    RecipientState,
    RecipientStatus,
)

_MSG_COLS = "id, sender, state, created_at, size, is_bounce, origin, envid"
_RCPT_COLS = "address, state, attempts, next_attempt, last_reply, last_host, updated_at"


def get(
    conn: sqlite3.Connection,
    message_id: str,
    *,
    with_data: bool = False,
    recipients: tuple[RecipientStatus, ...] | None = None,
) -> QueuedMessage | None:
    row = conn.execute(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    data = None
    if with_data:
        blob = conn.execute("SELECT data FROM message_data WHERE id = ?", (message_id,)).fetchone()
        data = None if blob is None else bytes(blob[0])
    if recipients is None:
        recipients = recipients_of(conn, message_id, "", ())
    return _message(row, recipients, data)


def list_messages(conn: sqlite3.Connection, where: QueueFilter) -> list[QueuedMessage]:
    if where.limit < 1:
        raise QueueError(f"QueueFilter.limit must be >= 1, got {where.limit}")
    sql = [f"SELECT {_MSG_COLS} FROM messages m WHERE 1"]
    args: list[object] = []
    if where.state is not None:
        sql.append("AND m.state = ?")
        args.append(str(MessageState(where.state)))
    if where.sender is not None:
        sql.append("AND lower(m.sender) = lower(?)")
        args.append(where.sender)
    if where.recipient_state is not None or where.recipient_domain is not None:
        # One EXISTS: "a recipient at example.com that is deferred", not two unrelated ones.
        sub = ["SELECT 1 FROM recipients r WHERE r.message_id = m.id"]
        if where.recipient_state is not None:
            sub.append("AND r.state = ?")
            args.append(str(RecipientState(where.recipient_state)))
        if where.recipient_domain is not None:
            sub.append("AND r.domain = ?")
            args.append(where.recipient_domain.lower().lstrip("@"))
        sql.append(f"AND EXISTS ({' '.join(sub)})")
    if where.after_id is not None:
        sql.append("AND m.id > ?")
        args.append(where.after_id)
    sql.append("ORDER BY m.id LIMIT ?")
    args.append(where.limit)
    rows = conn.execute(" ".join(sql), args).fetchall()
    return [_message(row, recipients_of(conn, row[0], "", ()), None) for row in rows]


def counts(conn: sqlite3.Connection) -> QueueCounts:
    result = QueueCounts(
        messages={str(s): 0 for s in MessageState},
        recipients={str(s): 0 for s in RecipientState},
    )
    for state, n in conn.execute("SELECT state, count(*) FROM messages GROUP BY state"):
        result.messages[state] = n
    for state, n in conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"):
        result.recipients[state] = n
    return result


def recipients_of(
    conn: sqlite3.Connection, message_id: str, extra: str, args: tuple[object, ...]
) -> tuple[RecipientStatus, ...]:
    rows = conn.execute(
        f"SELECT {_RCPT_COLS} FROM recipients WHERE message_id = ?{extra} ORDER BY idx",
        (message_id, *args),
    )
    return tuple(
        RecipientStatus(
            recipient=address,
            state=RecipientState(state),
            attempts=attempts,
            next_attempt=next_attempt,
            last_reply=last_reply,
            last_host=last_host,
            updated_at=updated_at,
        )
        for address, state, attempts, next_attempt, last_reply, last_host, updated_at in rows
    )


def _message(
    row: tuple[object, ...], recipients: tuple[RecipientStatus, ...], data: bytes | None
) -> QueuedMessage:
    message_id, sender, state, created_at, size, is_bounce, origin, envid = row
    return QueuedMessage(
        id=str(message_id),
        sender=str(sender),
        state=MessageState(str(state)),
        created_at=float(created_at),  # type: ignore[arg-type]
        size=int(size),  # type: ignore[call-overload]
        is_bounce=bool(is_bounce),
        origin=str(origin),
        recipients=recipients,
        data=data,
        envid=None if envid is None else str(envid),
    )
