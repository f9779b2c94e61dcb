"""Helper threads that do not preempt the event loop when they wake.

The queue's writer thread and the delivery log's writer are woken by the event loop: a
request to commit, lines to write. Under Linux's default policy a thread that wakes may
take the core from the thread that woke it. Where both share a core (a pinned worker,
or a busy machine), the writer then finds the GIL held by the loop and gives the core
back: two context switches for nothing, 0.6-1.7 of them a message with a connection per
message. SCHED_BATCH, which needs no privilege, keeps the thread's fair share of CPU
and drops only that preemption on wake-up: the writer runs when the loop waits or its
time slice ends, and then finds more requests to share one commit. Measured with one
pinned worker, 20 sessions and a connection per message: relay CPU per message lower in
8 of 8 alternating pairs, ~10% on average (README, "The relay"). A commit that sessions
wait for should not wait for the loop to sleep, though: queue/groupcommit.py hands the
writer the core once its company is complete.
"""

from __future__ import annotations

import os


def as_batch_thread() -> bool:
    """Put the calling thread (not its process) in SCHED_BATCH; True if it is now.
    False where the platform has no such policy or refuses: the thread runs as before."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    return True
