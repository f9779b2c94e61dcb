"""The [observe] settings: defaults, and clear errors naming the key."""

from __future__ import annotations

import pytest

from mxpress.config import load_settings
from mxpress.errors import ConfigError


def test_defaults() -> None:
    o = load_settings(environ={}).observe
    assert o.delivery_log is True
    assert o.delivery_log_max_bytes == 50 * 1024 * 1024 and o.delivery_log_backups == 5
    assert o.top_domains == 20 and o.queue_counts_interval == 15.0 and o.profile_port == 0


def test_environment_override() -> None:
    env = {"MXPRESS__OBSERVE__PROFILE_PORT": "8026", "MXPRESS__OBSERVE__DELIVERY_LOG": "false"}
    o = load_settings(environ=env).observe
    assert o.profile_port == 8026 and o.delivery_log is False


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("delivery_log_max_bytes", "100", "observe.delivery_log_max_bytes: at least 4096"),
        ("delivery_log_backups", "0", "observe.delivery_log_backups: at least 1"),
        ("top_domains", "-1", "observe.top_domains"),
        ("queue_counts_interval", "0", "observe.queue_counts_interval: must be greater than 0"),
        ("profile_port", "70000", "observe.profile_port"),
        ("delivery_log", '"yes"', "observe.delivery_log: expected true or false"),
        ("profile_prot", "1", "did you mean 'profile_port'"),
    ],
)
def test_bad_values_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(environ={f"MXPRESS__OBSERVE__{key.upper()}": value})
