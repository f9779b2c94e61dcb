"""Per-destination SMTP session pools: limits, FIFO waiters, health checks, idle reaping,
per-host connect backoff."""

from mxpress.pool.config import PoolConfig
from mxpress.pool.key import DestinationKey
from mxpress.pool.lease import Lease
from mxpress.pool.pool import Opener, Pool
from mxpress.pool.stats import CloseReason, DestinationStats, PoolStats

__all__ = [
    "CloseReason",
    "DestinationKey",
    "DestinationStats",
    "Lease",
    "Opener",
    "Pool",
    "PoolConfig",
    "PoolStats",
]
