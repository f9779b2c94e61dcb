"""The SQLite queue's schema, connection settings and message ids.

Bodies live in `message_data`, apart from the envelope, so that listing and leasing
never read a body they do not return. `messages.next_due` is the one column the
scheduler pages on: the earliest `next_attempt` of a recipient still to deliver, or the
lease's expiry while a worker holds the message — so a leased message drops out of the
due range by itself and comes back, unasked, when a crashed worker's lease runs out.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
from pathlib import Path

from mxpress.errors import QueueError

SCHEMA_VERSION = 1

# Partial indexes cover only active messages: done ones (the bulk of a busy queue's
# history) cost nothing on the due path.
SCHEMA = (
    """CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        sender TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        size INTEGER NOT NULL,
        is_bounce INTEGER NOT NULL,
        origin TEXT NOT NULL,
        envid TEXT,
        next_due REAL,
        lease_token TEXT,
        lease_expires REAL
    ) WITHOUT ROWID""",
    "CREATE INDEX messages_due ON messages (next_due) WHERE state = 'active'",
    "CREATE INDEX messages_age ON messages (is_bounce, created_at) WHERE state = 'active'",
    "CREATE TABLE message_data (id TEXT PRIMARY KEY, data BLOB NOT NULL)",
    """CREATE TABLE recipients (
        message_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        last_reply TEXT NOT NULL DEFAULT '',
        last_host TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (message_id, idx)
    ) WITHOUT ROWID""",
)
# Fewer statements per message (under load each costs the writer thread a turn at the
# GIL): a done message's body is dropped by the UPDATE that marks it done, and a message,
# its body and its first recipient are stored by one INSERT into the view `new_message`.
# IF NOT EXISTS: these are also added to files made without them (no version bump).
ADDED = (
    """CREATE TRIGGER IF NOT EXISTS message_done_drops_body
    AFTER UPDATE OF state ON messages WHEN NEW.state = 'done'
    BEGIN DELETE FROM message_data WHERE id = NEW.id; END""",
    """CREATE VIEW IF NOT EXISTS new_message AS SELECT m.id, m.sender, m.created_at,
    m.size, m.is_bounce, m.origin, m.envid, m.next_due, m.lease_token, m.lease_expires,
    d.data, r.address, r.domain FROM messages m JOIN message_data d ON d.id = m.id
    JOIN recipients r ON r.message_id = m.id AND r.idx = 0""",
    """CREATE TRIGGER IF NOT EXISTS new_message_stores INSTEAD OF INSERT ON new_message
    BEGIN
    INSERT INTO messages (id, sender, state, created_at, size, is_bounce, origin, envid,
        next_due, lease_token, lease_expires)
    VALUES (NEW.id, NEW.sender, 'active', NEW.created_at, NEW.size, NEW.is_bounce,
        NEW.origin, NEW.envid, NEW.next_due, NEW.lease_token, NEW.lease_expires);
    INSERT INTO message_data (id, data) VALUES (NEW.id, NEW.data);
    INSERT INTO recipients (message_id, idx, address, domain, state, next_attempt,
        updated_at)
    VALUES (NEW.id, 0, NEW.address, NEW.domain, 'pending', NEW.created_at,
        NEW.created_at);
    END""",
    # A message whose sender was told of its delay (retry.delay_warning): told once.
    "CREATE TABLE IF NOT EXISTS delay_warnings (message_id TEXT PRIMARY KEY) WITHOUT ROWID",
)


def connect(path: Path, *, create: bool, busy_timeout: float) -> sqlite3.Connection:
    """Open the queue file (WAL, fsync on every COMMIT). `create=False` (the CLI) fails
    on a missing file instead of making an empty queue somewhere unexpected."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise QueueError(f"no queue database at {path} (wrong --data-dir?)")
    uri = path.resolve().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (group commit).
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
    except sqlite3.Error as exc:
        raise QueueError(f"cannot open the queue database {path}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueError(
                f"the queue database {path} cannot use WAL (journal_mode is {mode}); "
                "put the data directory on a local filesystem"
            )
        # FULL: a WAL commit is fsynced before COMMIT returns (NORMAL would not be durable).
        conn.execute("PRAGMA synchronous = FULL")
        # Keep the WAL file from staying at its high-water mark after a burst.
        conn.execute("PRAGMA journal_size_limit = 67108864")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables on first use; refuse a file written by a newer mxpress."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise QueueError(
                f"the queue database has schema version {version}; this mxpress reads "
                f"version {SCHEMA_VERSION}"
            )
        for statement in ADDED:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class IdGenerator:
    """20 hex characters: 12 of milliseconds since the epoch, then 8 that start random
    and count up within one millisecond, so ids sort by arrival (pagination) even with
    a frozen test clock, and two processes on one file practically never collide.
    Also the lease tokens of messages leased as they are stored (`lease_token`)."""

    __slots__ = ("_last_ms", "_last_tail", "_random", "_token_prefix", "_tokens")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_tail = 0
        # The random start of each millisecond's count only keeps two processes on one
        # file apart, which a generator seeded from the OS once does as well as a draw
        # from it per millisecond (that was a getrandom system call per message or so).
        self._random = random.Random(secrets.token_bytes(16))
        # A token only has to differ from every other holder's: a random prefix per
        # generator, then a count (a draw per message was a syscall per message).
        self._token_prefix = f"{self._random.getrandbits(64):016x}"
        self._tokens = 0

    def lease_token(self) -> str:
        self._tokens += 1
        return f"{self._token_prefix}{self._tokens:x}"

    @staticmethod
    def bound(when: float) -> str:
        """The smallest id that a message created at `when` can have."""
        return f"{max(int(when * 1000), 0):012x}00000000"

    def new(self, now: float) -> str:
        ms = max(int(now * 1000), 0)
        if ms <= self._last_ms:
            ms = self._last_ms  # the clock went back, or the same millisecond
            tail = self._last_tail + 1
            if tail >= 1 << 32:
                ms, tail = ms + 1, self._random.getrandbits(31)
        else:
            tail = self._random.getrandbits(31)  # half the range: room to count up
        self._last_ms, self._last_tail = ms, tail
        return f"{ms:012x}{tail:08x}"
