"""Observability: phase timings and the trace waterfall.

This package's top level is the pure data side (no I/O), so that any layer may import
it. The tracer, which drives DNS and sessions, is `mxpress.observe.tracer` (import it
from there: it depends on the client and DNS layers).
"""

from mxpress.observe.trace import (
    OUTCOMES,
    Phase,
    Trace,
    TraceBuilder,
    compare,
    flight_spans,
    to_json,
    verdict,
)

__all__ = [
    "OUTCOMES",
    "Phase",
    "Trace",
    "TraceBuilder",
    "compare",
    "flight_spans",
    "to_json",
    "verdict",
]
