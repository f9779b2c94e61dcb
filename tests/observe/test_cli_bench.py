"""`mxpress bench` against real lab servers: both modes, the table, pooled faster."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from mxpress.cli import cli
from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, SmtpSink, TestCA, aiosmtpd_server


def run_bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def test_bench_against_smtp_sink(sink: SmtpSink) -> None:
    before = sink.message_count()
    code, out = run_bench(
        "--server", f"{sink.host}:{sink.port}", "--no-tls",
        "--messages", "200", "--concurrency", "8", "--json",
    )  # fmt: skip
    assert code == 0, out
    doc = json.loads(out)
    naive, pooled = doc["modes"]
    assert (naive["mode"], pooled["mode"]) == ("naive", "pooled")
    for mode in (naive, pooled):
        assert mode["messages"] == mode["sent"] == 200
        assert mode["errors"] == 0 and mode["error_rate"] == 0
        assert 0 < mode["p50_ms"] <= mode["p99_ms"]
    assert naive["connects"] == 200  # a session per message
    assert 1 <= pooled["connects"] <= 8  # at most one per sender
    assert doc["ratio"] > 1, doc  # pooled sends more per second
    assert sink.message_count() - before == 400


@pytest.fixture
def tls_sink(lab_ca: TestCA) -> Iterator[tuple[AiosmtpdServer, RecordingHandler]]:
    handler = RecordingHandler()
    server = start_lab_server(
        lambda: aiosmtpd_server(
            handler,
            tls_context=lab_ca.server_context(),
            require_starttls=True,
            auth={"bench": "bench-pass"},
            auth_required=True,
        )
    )
    with server:
        yield server, handler


def test_bench_table_with_starttls_and_auth(
    lab_ca: TestCA, tls_sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, handler = tls_sink
    code, out = run_bench(
        "--server", f"{server.host}:{server.port}", "--starttls",
        "--cafile", str(lab_ca.ca_pem), "--user", "bench", "--password", "bench-pass",
        "--messages", "30", "--concurrency", "3", "--to", "someone@bench.test",
    )  # fmt: skip
    assert code == 0, out
    for text in ("naive", "pooled", "msgs/s", "p50 ms", "p99 ms", "err rate", "connects"):
        assert text in out
    assert "pooled / naive:" in out and "first error" not in out
    assert len(handler.messages) == 60
    assert all(m.tls and m.auth_login == "bench" for m in handler.messages)
    assert {tuple(m.rcpt_tos) for m in handler.messages} == {("someone@bench.test",)}


def test_bench_reports_an_unreachable_server() -> None:
    from tests.lab.servers import free_port

    code, out = run_bench(
        "--server", f"127.0.0.1:{free_port()}", "--no-tls", "--messages", "3", "--json"
    )  # fmt: skip
    assert code == 1
    doc = json.loads(out)
    for mode in doc["modes"]:
        assert mode["errors"] == 3 and mode["error_rate"] == 1.0
        assert "connect" in mode["first_error"]
