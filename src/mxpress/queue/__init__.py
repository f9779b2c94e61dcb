"""The durable queue: the QueueStore contract, its SQLite implementation, the retry policy."""

from mxpress.queue.groupcommit import QueueStats
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.sqlite import SQLiteQueue
from mxpress.queue.store import (
    AttemptOutcome,
    Lease,
    MessageState,
    NewMessage,
    QueueCounts,
    QueuedMessage,
    QueueFilter,
    QueueStore,
    RecipientState,
    RecipientStatus,
)

__all__ = [
    "AttemptOutcome",
    "Lease",
    "MessageState",
    "NewMessage",
    "QueueCounts",
    "QueueFilter",
    "QueueStats",
    "QueueStore",
    "QueuedMessage",
    "RecipientState",
    "RecipientStatus",
    "RetryPolicy",
    "SQLiteQueue",
]
