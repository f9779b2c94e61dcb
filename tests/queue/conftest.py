"""Fixtures for the queue tests: a store on a real file, with a clock the test moves."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mxpress.queue import NewMessage, SQLiteQueue
from mxpress.queue.sqlite_schema import connect, ensure_schema

T0 = 1_700_000_000.0


class FakeClock:
    """Wall-clock stand-in: `clock()` returns `now`; tests advance it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def msg(*recipients: str, sender: str = "app@example.org", data: bytes = b"body") -> NewMessage:
    return NewMessage(sender=sender, recipients=recipients or ("rcpt@example.com",), data=data)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "queue.sqlite3"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a fresh queue file, for the SQL functions (sqlite_ops) alone."""
    db = connect(tmp_path / "queue.sqlite3", create=True, busy_timeout=1.0)
    ensure_schema(db)
    yield db
    db.close()


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[SQLiteQueue]:
    queue = SQLiteQueue(db_path, clock=clock, group_commit_window=0)
    await queue.open()
    try:
        yield queue
    finally:
        await queue.close()
