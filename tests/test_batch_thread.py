"""The helper threads woken by the event loop run under SCHED_BATCH (batch_thread.py)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from mxpress import batch_thread
from mxpress.observe.delivery_log import DeliveryLog
from mxpress.queue.sqlite import SQLiteQueue

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="SCHED_BATCH is Linux's")


def policy_of(name: str) -> int:
    (thread,) = [t for t in threading.enumerate() if t.name == name and t.is_alive()]
    assert thread.native_id is not None
    return os.sched_getscheduler(thread.native_id)  # Linux takes a thread id here


@linux_only
def test_only_the_calling_thread_changes() -> None:
    answers: list[bool] = []
    policies: list[int] = []

    def helper() -> None:
        answers.append(batch_thread.as_batch_thread())
        policies.append(os.sched_getscheduler(0))

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join(5)
    assert answers == [True] and policies == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # not the process, not the caller


def test_no_such_policy_or_refused_leaves_the_thread_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(pid: int, policy: int, param: object) -> None:
        raise PermissionError("not allowed here")

    if hasattr(os, "sched_setscheduler"):
        monkeypatch.setattr(os, "sched_setscheduler", refuse)
        assert batch_thread.as_batch_thread() is False
    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    assert batch_thread.as_batch_thread() is False


@linux_only
async def test_the_queue_writer_is_a_batch_thread_and_the_loop_is_not(tmp_path: Path) -> None:
    store = SQLiteQueue(tmp_path / "queue.sqlite3")
    await store.open()
    try:
        assert policy_of("mxpress-queue-writer") == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        await store.close()


@linux_only
def test_the_delivery_log_writer_is_a_batch_thread(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "delivery.jsonl")
    log.start()
    try:
        deadline = time.monotonic() + 5
        # The thread sets its own policy as it starts: wait for it to have run that far.
        while policy_of("mxpress-delivery-log") != os.SCHED_BATCH:
            assert time.monotonic() < deadline, "the log writer never became a batch thread"
            time.sleep(0.01)
    finally:
        log.close()
