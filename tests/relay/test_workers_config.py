"""server.workers: the bounds, and never stranding a worker's queue file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxpress.config import load_settings
from mxpress.errors import ConfigError
from mxpress.queue import NewMessage, SQLiteQueue
from mxpress.queue.sharded import shard_path
from mxpress.relay import build_relay


def settings_for(data: Path, workers: int) -> object:
    return load_settings(
        environ={
            "MXPRESS__SERVER__DATA_DIR": str(data),
            "MXPRESS__SERVER__WORKERS": str(workers),
            "MXPRESS__HTTP__ENABLED": "false",
            "MXPRESS__SUBMISSION__LISTEN": "127.0.0.1:0",
            "MXPRESS__DELIVERY__RELAY": "smtp+plain://127.0.0.1:9",
        }
    )


@pytest.mark.parametrize("workers", [0, 65])
def test_workers_out_of_bounds(tmp_path: Path, workers: int) -> None:
    with pytest.raises(ConfigError, match=r"server\.workers: 1-64"):
        settings_for(tmp_path, workers)


async def test_a_queue_file_no_worker_would_deliver_from_is_refused(tmp_path: Path) -> None:
    async with SQLiteQueue(shard_path(tmp_path, 1)) as second:
        await second.enqueue(NewMessage("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\nx\r\n"))
    relay = build_relay(settings_for(tmp_path, 1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"queue\.1\.sqlite3 .* still holds 1 undelivered"):
        await relay.start()
    # Enough workers: it starts, and worker 1 would deliver that file.
    relay = build_relay(settings_for(tmp_path, 2), 0)  # type: ignore[arg-type]
    await relay.start()
    await relay.stop()


def test_delay_warning_time_reaches_the_scheduler(tmp_path: Path) -> None:
    env = {
        "MXPRESS__SERVER__DATA_DIR": str(tmp_path),
        "MXPRESS__HTTP__ENABLED": "false",
        "MXPRESS__SUBMISSION__LISTEN": "127.0.0.1:0",
        "MXPRESS__DELIVERY__RELAY": "smtp+plain://127.0.0.1:9",
    }
    assert load_settings(environ=env).retry.delay_warning_time == 0  # off by default
    settings = load_settings(environ={**env, "MXPRESS__RETRY__DELAY_WARNING_TIME": "14400"})
    relay = build_relay(settings)
    assert relay.scheduler._policy.delay_warning == 14400
    with pytest.raises(ConfigError, match=r"retry\.delay_warning_time: 0 \(never\) or more"):
        load_settings(environ={**env, "MXPRESS__RETRY__DELAY_WARNING_TIME": "-1"})
