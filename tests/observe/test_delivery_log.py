"""The delivery log: one JSON line per recipient per attempt, rotated by size, and never a
message body or a credential in it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.observe import delivery_log, log_writer
from mxpress.observe.delivery_log import DeliveryLog, message_id_of
from mxpress.protocol.replies import Reply
from mxpress.queue.store import (
    AttemptOutcome,
    MessageState,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
)
from mxpress.security.passwords import hash_password
from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, TestCA, aiosmtpd_server
from tests.observe.relay_lab import (
    API_KEY,
    SENDER,
    http_burst,
    smtp_burst,
    start_relay,
    wait_for,
    write_config,
)

# The keys in the order every line has them (the order the lines are written in).
KEY_ORDER = [
    "ts",
    "queue_id",
    "message_id",
    "sender",
    "recipient",
    "attempt",
    "outcome",
    "reply",
    "host",
    "ip",
    "mx",
    "timings",
    "dns_cache",
    "new_session",
    "tls",
    "next_attempt",
]
KEYS = set(KEY_ORDER)
BODY_MARKER = "BODY-MARKER-c0ffee-never-logged"
SUBMIT_USER, SUBMIT_PASSWORD = "app", "submit-pass-Q7w8e9"
RELAY_USER, RELAY_PASSWORD = "relayuser", "relay-pass-Z1x2c3"


def read_lines(directory: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(directory.glob("delivery.jsonl*")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


# -- Message-ID from the header section only ------------------------------------------


def test_message_id_from_the_header_section() -> None:
    assert message_id_of(b"From: a@b\r\nMessage-ID: <x@y>\r\n\r\nbody") == "<x@y>"
    assert message_id_of(b"message-id:\r\n <folded@y>\r\nTo: c\r\n\r\n") == "<folded@y>"
    assert message_id_of(b"Subject: headers only\r\nMessage-Id: <h@y>\r\n") == "<h@y>"


def test_message_id_never_comes_from_the_body() -> None:
    data = b"From: a@b\r\nSubject: s\r\n\r\nMessage-ID: <" + BODY_MARKER.encode() + b">\r\n"
    assert message_id_of(data) is None
    # A header section that does not end in the first 64 KiB is not searched past it.
    huge = b"X-Junk: " + b"j" * 70_000 + b"\r\nMessage-ID: <late@y>\r\n\r\nbody"
    assert message_id_of(huge) is None


# -- records and rotation, without a relay --------------------------------------------


def fake_attempt(n: int, body: bytes = b"") -> tuple[Any, Any, Any]:
    rcpts = [f"r{n}a@x.test", f"r{n}b@y.test"]
    data = f"Message-ID: <id{n}@x.test>\r\nFrom: s@x.test\r\n\r\n".encode() + body
    message = QueuedMessage(
        f"q{n}",
        "s@x.test",
        MessageState.ACTIVE,
        0.0,
        len(data),
        False,
        "test",
        (
            RecipientStatus(rcpts[0], RecipientState.PENDING),
            RecipientStatus(rcpts[1], RecipientState.DEFERRED, attempts=2),
        ),
        data,
    )
    result = SendResult(
        "s@x.test",
        {
            rcpts[0]: RecipientResult(
                rcpts[0],
                Outcome.DELIVERED,
                Reply(250, ("ok",), "2.0.0"),
                "mx.x.test:25",
                "",
                "192.0.2.1",
                "mx.x.test",
            ),
            rcpts[1]: RecipientResult(
                rcpts[1], Outcome.DEFERRED, Reply(450, ("busy",)), "mx.y.test:25", "450 busy"
            ),
        },
        timings={"dns": 0.0012345, "total": 0.02},
        reused_sessions=1,
    )
    outcomes = [
        AttemptOutcome(rcpts[0], RecipientState.DELIVERED, "250 2.0.0 ok", "mx.x.test:25"),
        AttemptOutcome(
            rcpts[1],
            RecipientState.DEFERRED,
            "failed at smtp://u:hunter2@relay.test: 450 busy",
            "mx.y.test:25",
            next_attempt=1_700_000_300.0,
        ),
    ]
    return message, result, outcomes


def test_records_per_recipient() -> None:
    log = DeliveryLog("/nonexistent/never-opened", clock=lambda: 1_700_000_000.25)
    delivered, deferred = log.records_for(*fake_attempt(1))
    assert set(delivered) == KEYS == set(deferred)
    assert delivered["ts"] == "2023-11-14T22:13:20.250Z"
    assert delivered["message_id"] == "<id1@x.test>" and delivered["queue_id"] == "q1"
    assert (delivered["attempt"], deferred["attempt"]) == (1, 3)  # 2 earlier attempts
    assert delivered["outcome"] == "delivered" and deferred["outcome"] == "deferred"
    assert delivered["ip"] == "192.0.2.1" and delivered["mx"] == "mx.x.test"
    assert delivered["timings"] == {"dns": 1.234, "total": 20.0}  # ms
    assert delivered["tls"] == "reused" and delivered["new_session"] is False
    assert deferred["next_attempt"] == "2023-11-14T22:18:20.000Z"
    assert "hunter2" not in deferred["reply"] and "smtp://***@relay.test" in deferred["reply"]


ODD_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",))  # surrogates: not UTF-8
    | st.sampled_from('"\\/\x00\x1f\x7f\u2028\u2029\ufeffé中😀://@ \t\r\n'),
    max_size=40,
)


def attempt_with(sender: str, rcpt: str, reply: str, message_id: str) -> tuple[Any, Any, Any]:
    data = f"Message-ID: {message_id}\r\n\r\nbody".encode()
    message = QueuedMessage(
        "q\"1\\", sender, MessageState.ACTIVE, 0.0, len(data), False, "test",
        (RecipientStatus(rcpt, RecipientState.PENDING, attempts=4),), data,
    )  # fmt: skip
    result = SendResult(
        sender,
        {rcpt: RecipientResult(rcpt, Outcome.DEFERRED, None, "h:25", "", "::1", None)},
        timings={"dns": 0.1, 'q"x': 1e-9, "total": 12.5},
        new_sessions=1,
        tls_resumed=1,
        dns={"x.test": "hit"},
    )
    outcomes = [AttemptOutcome(rcpt, RecipientState.DEFERRED, reply, "", next_attempt=5.0)]
    return message, result, outcomes


@settings(max_examples=300, deadline=None)
@given(sender=ODD_TEXT, local=ODD_TEXT, reply=ODD_TEXT, message_id=ODD_TEXT)
def test_lines_are_the_json_of_their_records_whatever_the_text(
    sender: str, local: str, reply: str, message_id: str
) -> None:
    log = DeliveryLog("/nonexistent/never-opened", clock=lambda: 1_700_000_000.5)
    rcpt = f"{local}@x.test"
    (line,) = log.lines_for(*attempt_with(sender, rcpt, reply, message_id))
    record = json.loads(line)
    # Exactly what json.dumps would write for the record: same keys, order, escapes.
    assert line == json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    assert list(record) == KEY_ORDER
    assert (record["sender"], record["recipient"], record["queue_id"]) == (sender, rcpt, 'q"1\\')
    assert record["attempt"] == 5 and record["outcome"] == "deferred"
    assert record["reply"] == delivery_log._USERINFO.sub(
        r"\1***@", delivery_log._CONTROLS.sub(" ", reply)[:1000]
    )
    assert record["timings"] == {"dns": 100.0, 'q"x': 0.0, "total": 12500.0}
    assert (record["host"], record["ip"], record["mx"]) == ("h:25", "::1", None)
    assert record["dns_cache"] == "hit" and record["new_session"] is True
    assert record["tls"] == "resumed"
    assert record["next_attempt"] == "1970-01-01T00:00:05.000Z"
    assert record["message_id"] == message_id_of(f"Message-ID: {message_id}\r\n\r\n".encode())


def test_rotation_at_max_bytes(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "delivery.jsonl", max_bytes=2000, backups=2)
    log.start()
    for n in range(60):
        log.on_attempt(*fake_attempt(n))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["delivery.jsonl", "delivery.jsonl.1", "delivery.jsonl.2"]
    for path in tmp_path.iterdir():
        assert 0 < path.stat().st_size <= 2000
        for line in path.read_text().splitlines():
            assert set(json.loads(line)) == KEYS  # whole lines: rotation never splits one
    assert log.records == 120 and log.dropped == 0
    # The newest lines are in the live file.
    last = json.loads((tmp_path / "delivery.jsonl").read_text().splitlines()[-1])
    assert last["queue_id"] == "q59"


def test_a_full_queue_drops_lines_instead_of_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = threading.Event()
    original = log_writer.LineWriter._write

    def slow_disk(self: log_writer.LineWriter, lines: list[str]) -> None:
        stuck.wait(10)  # the writer is stuck: nothing drains the queue
        original(self, lines)

    monkeypatch.setattr(log_writer.LineWriter, "_write", slow_disk)
    log = DeliveryLog(tmp_path / "delivery.jsonl", max_pending=3)
    log.start()
    log.on_attempt(*fake_attempt(0))  # 2 lines: the writer takes them and gets stuck
    time.sleep(0.2)
    for n in range(1, 5):
        log.on_attempt(*fake_attempt(n))  # returns at once
    assert log.records == 2 + 3 and log.dropped == 5
    stuck.set()
    log.close()
    assert len((tmp_path / "delivery.jsonl").read_text().splitlines()) == 5


async def test_on_the_loop_lines_reach_the_thread_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "delivery.jsonl"
    log = DeliveryLog(path)
    log.start()
    writer = log._writer
    assert writer is not None
    for n in range(10):
        log.on_attempt(*fake_attempt(n))
    assert writer.taken == 0  # held for one hand-over, not one queue put per line
    deadline = time.monotonic() + 5
    while len(path.read_text().splitlines()) < 20:
        assert time.monotonic() < deadline, "the batch was never handed over"
        await asyncio.sleep(0.01)
    assert writer.taken == 20
    for n in range(10, 10 + delivery_log._HAND_OVER_LINES // 2):  # a full batch: at once
        log.on_attempt(*fake_attempt(n))
    assert not log._batch and log._timer is None
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == log.records == 20 + delivery_log._HAND_OVER_LINES
    assert json.loads(lines[-1])["queue_id"] == f"q{9 + delivery_log._HAND_OVER_LINES // 2}"


# -- a real relay: credentials everywhere, none in the log ------------------------------


@pytest.fixture
def auth_sink(lab_ca: TestCA) -> Iterator[tuple[AiosmtpdServer, RecordingHandler]]:
    """A smarthost that wants STARTTLS and AUTH, and defers later@ until told otherwise."""
    handler = RecordingHandler(rcpt_replies={"later@b.test": "450 4.2.1 try again later"})
    server = start_lab_server(
        lambda: aiosmtpd_server(
            handler,
            tls_context=lab_ca.server_context(),
            require_starttls=True,
            auth={RELAY_USER: RELAY_PASSWORD},
            auth_required=True,
        )
    )
    with server:
        yield server, handler


async def test_relay_logs_each_recipient_attempt_without_secrets(
    tmp_path: Path, lab_ca: TestCA, auth_sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, handler = auth_sink
    config = write_config(
        tmp_path,
        f"smtp+starttls://{RELAY_USER}:{RELAY_PASSWORD}@{server.host}:{server.port}",
        delivery={"cafile": str(lab_ca.ca_pem)},
        submission={
            "tls_cert": str(lab_ca.cert_pem),
            "tls_key": str(lab_ca.key_pem),
            "trusted_networks": [],
            "users": {SUBMIT_USER: hash_password(SUBMIT_PASSWORD)},
        },
    )
    relay = await start_relay(config)
    try:
        assert relay.submission is not None
        smtp_rcpts = ["one@a.test", "two@a.test", "later@b.test"]
        await asyncio.to_thread(
            smtp_burst,
            relay.submission.port,
            smtp_rcpts,
            marker=BODY_MARKER,
            login=(SUBMIT_USER, SUBMIT_PASSWORD),
            context=lab_ca.client_context(),
        )
        [accepted] = await http_burst(relay, ["three@c.test"], marker=BODY_MARKER)
        await wait_for(lambda: len(handler.messages) >= 3)
        await wait_for(lambda: relay.scheduler.stats.deferred >= 1)
        handler.rcpt_replies.clear()  # the next attempt of later@ succeeds
        await wait_for(lambda: len(handler.messages) >= 4)
        await wait_for(lambda: relay.scheduler.stats.attempts >= 5)
    finally:
        await relay.stop(grace=5)

    data_dir = tmp_path / "var"
    lines = read_lines(data_dir)
    assert len(lines) == 5  # 4 recipients, one of them twice
    for line in lines:
        assert set(line) == KEYS
        assert line["sender"] == SENDER
        assert line["host"] == f"{server.host}:{server.port}"
        assert line["ip"] == "127.0.0.1"
        assert line["mx"] is None  # a smarthost, not an MX
        assert line["tls"] in ("full", "resumed", "reused")
        assert "queue" in line["timings"]  # every attempt waited for a session
        if line["outcome"] == "delivered":
            assert {"mail", "rcpt", "data", "total"} <= set(line["timings"])
    by_rcpt: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_rcpt.setdefault(line["recipient"], []).append(line)
    first, second = by_rcpt["later@b.test"]
    assert (first["attempt"], first["outcome"]) == (1, "deferred")
    assert first["reply"].startswith("450") and first["next_attempt"] is not None
    assert (second["attempt"], second["outcome"]) == (2, "delivered")
    assert first["queue_id"] == second["queue_id"]
    [http_line] = by_rcpt["three@c.test"]
    assert http_line["queue_id"] == accepted["id"]
    assert http_line["message_id"] == accepted["message_id"]
    assert http_line["outcome"] == "delivered" and http_line["reply"].startswith("250")
    assert by_rcpt["one@a.test"][0]["message_id"] == "<m0@sender.test>"
    # Nothing secret, no body: in the log files as bytes, whatever the encoding.
    raw = b"".join(p.read_bytes() for p in data_dir.glob("delivery.jsonl*"))
    for secret in (BODY_MARKER, SUBMIT_PASSWORD, RELAY_PASSWORD, API_KEY, "body of message"):
        assert secret.encode() not in raw, secret
    # ... while the messages did carry the marker (so it would have been there to leak).
    assert all(BODY_MARKER.encode() in m.content for m in handler.messages)


def test_timestamps_cached_per_second_match_the_full_format() -> None:
    from mxpress.observe.delivery_log import _Timestamps
    from mxpress.rfc3339 import utc_millis

    stamps = _Timestamps()
    edges = [1_700_000_000.0, 1_700_000_000.001, 1_700_000_000.25, 1_700_000_000.998]
    edges += [1_700_000_001.5, 1_700_000_000.75, 0.0, 86_399.125, 1_700_000_002.9999997]
    for epoch in edges:
        assert stamps.iso(epoch) == utc_millis(epoch), epoch
    for n in range(20_000):  # float edges around each millisecond
        epoch = 1_700_000_000 + n * 0.000731
        assert stamps.iso(epoch) == utc_millis(epoch), epoch


def test_timings_are_milliseconds_and_always_json() -> None:
    log = DeliveryLog("/nonexistent/never-opened", clock=lambda: 1_700_000_000.0)
    message, result, outcomes = fake_attempt(7)
    result.timings.update({"connect": 0.0015, 'odd "phase"': 0.25, "never": float("nan")})

    def strict(constant: str) -> object:
        raise AssertionError(f"not JSON: {constant}")

    for line in log.lines_for(message, result, outcomes):
        timings = json.loads(line, parse_constant=strict)["timings"]
        assert timings == {
            "dns": 1.234,  # round(1.2345, 3) as float rounding has it
            "total": 20.0,
            "connect": 1.5,
            'odd "phase"': 250.0,
            "never": None,
        }
