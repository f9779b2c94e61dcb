"""Timestamps as mxpress writes them for machines (HTTP API, delivery log): RFC 3339,
UTC, milliseconds, "Z" (`2025-01-02T03:04:05.678Z`), which JSON clients parse as is."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_millis(epoch: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (truncated, as datetime does)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
