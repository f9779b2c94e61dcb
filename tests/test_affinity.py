"""server.cpu_affinity: which CPU each worker gets, and that pinning holds for threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from mxpress import affinity
from mxpress.config import load_settings
from mxpress.errors import ConfigError


def test_workers_take_the_allowed_cpus_in_order_round_robin() -> None:
    assert [affinity.cpu_for(w, {0, 1}) for w in range(5)] == [0, 1, 0, 1, 0]
    assert [affinity.cpu_for(w, {7, 2, 5}) for w in range(4)] == [2, 5, 7, 2]
    with pytest.raises(ConfigError, match="no CPU"):
        affinity.cpu_for(0, set())


def test_pinning_holds_for_the_thread_and_the_threads_it_starts() -> None:
    # os.sched_setaffinity(0) pins the calling thread only: do it in a thread of its
    # own, so that the test process stays free.
    allowed = os.sched_getaffinity(0)
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["cpu"] = affinity.pin_worker(1)
        seen["own"] = os.sched_getaffinity(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))
        child.start()
        child.join()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    expected = affinity.cpu_for(1, allowed)
    assert seen == {"cpu": expected, "own": {expected}, "child": {expected}}
    assert os.sched_getaffinity(0) == allowed


def test_config_key_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MXPRESS__SERVER__DATA_DIR": str(tmp_path)}
    assert load_settings(environ=env).server.cpu_affinity is False
    on = {**env, "MXPRESS__SERVER__CPU_AFFINITY": "true"}
    assert load_settings(environ=on).server.cpu_affinity is True
    with pytest.raises(ConfigError, match=r"server\.cpu_affinity: expected true or false"):
        load_settings(environ={**env, "MXPRESS__SERVER__CPU_AFFINITY": "yes"})
    monkeypatch.delattr(os, "sched_setaffinity")
    with pytest.raises(ConfigError, match=r"server\.cpu_affinity: not supported"):
        load_settings(environ=on)
    with pytest.raises(ConfigError, match=r"server\.cpu_affinity: not supported"):
        affinity.pin_worker(0)
