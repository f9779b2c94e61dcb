"""A real relay in the test's event loop, for the observability tests.

build_relay() from a TOML file (so the [observe] section goes through the settings
validation), listeners on 127.0.0.1 port 0, the queue in tmp_path, delivery to a lab
aiosmtpd sink. SMTP clients are smtplib in a thread (the relay runs in this loop); HTTP
clients are httpx.AsyncClient.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mxpress.config import load_settings
from mxpress.relay import Relay, build_relay
from mxpress.server.http import api_key_digest

API_KEY = "mxp_test-api-key-9f8e7d6c5b4a"
SENDER = "app@sender.test"


def write_config(
    tmp_path: Path,
    relay_url: str,
    *,
    observe: dict[str, Any] | None = None,
    submission: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
) -> Path:
    def table(values: dict[str, Any]) -> str:
        lines = []
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = f'"{value}"'
            elif isinstance(value, dict):
                text = "{" + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + "}"
            elif isinstance(value, list):
                text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines)

    sub = {"listen": "127.0.0.1:0", "trusted_networks": ["127.0.0.0/8"], **(submission or {})}
    dlv = {"relay": relay_url, "poll_interval": 0.05, **(delivery or {})}
    obs = {"queue_counts_interval": 0.1, **(observe or {})}
    config = tmp_path / "mxpress.toml"
    config.write_text(
        f"""
[server]
hostname = "relay.test"
data_dir = "{tmp_path / "var"}"

[submission]
{table(sub)}

[http]
listen = "127.0.0.1:0"
api_keys = {{ test = "{api_key_digest(API_KEY)}" }}

[delivery]
{table(dlv)}

[retry]
first_retry = 0.2
max_backoff = 1.0

[observe]
{table(obs)}
"""
    )
    return config


async def start_relay(config: Path) -> Relay:
    relay = build_relay(load_settings(config, environ={}))
    await relay.start()
    return relay


def http_base(relay: Relay) -> str:
    return f"http://127.0.0.1:{relay.http.port}"


def message(n: int, rcpt: str, marker: str = "") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: n{n}\r\nMessage-ID: <m{n}@sender.test>\r\n"
        f"\r\nbody of message {n} {marker}\r\n"
    ).encode()


def smtp_burst(
    port: int,
    rcpts: Iterable[str],
    *,
    marker: str = "",
    login: tuple[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> None:
    """Submit one message per recipient over one smtplib session (call in a thread)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        if context is not None:
            client.starttls(context=context)
        if login is not None:
            client.login(*login)
        for n, rcpt in enumerate(rcpts):
            assert client.sendmail(SENDER, [rcpt], message(n, rcpt, marker)) == {}


async def http_burst(
    relay: Relay, rcpts: Iterable[str], *, marker: str = ""
) -> list[dict[str, Any]]:
    """Submit one message per recipient through the HTTP API; the 202 bodies."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=http_base(relay), headers=headers) as client:
        replies = []
        for n, rcpt in enumerate(rcpts):
            response = await client.post(
                "/v1/messages",
                json={"from": SENDER, "to": [rcpt], "subject": f"h{n}", "text": f"http {marker}"},
            )
            assert response.status_code == 202, response.text
            replies.append(response.json())
        return replies


async def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


Samples = list[tuple[str, dict[str, str], float]]


async def scrape(relay: Relay) -> Samples:
    async with httpx.AsyncClient(base_url=http_base(relay)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {labels[label] for n, labels, _ in samples if n == name and label in labels}
