"""`server.cpu_affinity`: each relay worker on a CPU of its own.

With as many workers as cores, the kernel moves each worker's threads between cores.
A GIL hand-off between a worker's event loop and its queue writer then wakes a thread
on the other core (an interrupt to that core, dear in a VM), and the workers' threads
preempt one another. Pinned, a worker's threads share one core, where its GIL lets only
one of them run at a time anyway. The load generators and other programs still run
anywhere, which is why it is off by default: on a box shared with busy programs a
pinned worker cannot move away from them.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from mxpress.errors import ConfigError


def check_supported() -> None:
    """Raise ConfigError where the platform cannot pin a thread to a CPU."""
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("server.cpu_affinity: not supported on this platform")


def cpu_for(worker: int, allowed: Collection[int]) -> int:
    """The CPU of worker `worker`: the allowed CPUs in order, round robin."""
    if not allowed:
        raise ConfigError("server.cpu_affinity: this process may run on no CPU")
    cpus = sorted(allowed)
    return cpus[worker % len(cpus)]


def pin_worker(worker: int) -> int:
    """Pin the calling thread to worker `worker`'s CPU and return it. Call it before
    the worker starts any thread: threads inherit their creator's affinity."""
    check_supported()
    cpu = cpu_for(worker, os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu
