"""`mxpress send` end to end against a real aiosmtpd server."""

from __future__ import annotations

from collections.abc import Iterator
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from click.testing import CliRunner

from mxpress.cli import cli
from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, TestCA, aiosmtpd_server


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler(rcpt_replies={"nobody@example.test": "550 5.1.1 unknown user"})


@pytest.fixture
def server(handler: RecordingHandler, lab_ca: TestCA) -> Iterator[AiosmtpdServer]:
    with start_lab_server(
        lambda: aiosmtpd_server(
            handler, tls_context=lab_ca.server_context(), auth={"app": "s3cret"}
        )
    ) as s:
        yield s


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_send_unicode_subject_over_starttls_with_auth(
    server: AiosmtpdServer, handler: RecordingHandler, lab_ca: TestCA
) -> None:
    code, out, err = run(
        "send",
        "--server",
        f"{server.host}:{server.port}",
        "--starttls",
        "--cafile",
        str(lab_ca.ca_pem),
        "--user",
        "app",
        "--password",
        "s3cret",
        "--from",
        "app@mxpress.test",
        "--to",
        "ann@example.test",
        "--subject",
        "你好, 世界",
        "--body",
        "line one\n.\nline three",
    )
    assert code == 0, err
    assert "ann@example.test" in out and "accepted" in out
    [msg] = handler.wait_for_messages(1)
    assert msg.tls and msg.auth_login == "app"
    parsed = message_from_bytes(msg.content)
    assert parsed["Subject"].startswith("=?utf-8?")  # RFC 2047 on the wire
    assert str(make_header(decode_header(parsed["Subject"]))) == "你好, 世界"
    assert parsed["Date"] and parsed["Message-ID"] and parsed["MIME-Version"] == "1.0"
    assert "line one\n.\nline three" in parsed.get_payload(decode=True).decode().replace("\r", "")


def test_partial_refusal_exit_code(server: AiosmtpdServer) -> None:
    code, out, err = run(
        "send",
        "--server",
        f"{server.host}:{server.port}",
        "--no-tls",
        "--from",
        "app@mxpress.test",
        "--to",
        "ann@example.test",
        "--to",
        "nobody@example.test",
        "--body",
        "hi",
    )
    assert code == 2
    assert "refused" in out and "550" in out
    assert "nobody@example.test" in err


def test_all_refused_exit_code_and_reason(server: AiosmtpdServer) -> None:
    code, _, err = run(
        "send",
        "--server",
        f"{server.host}:{server.port}",
        "--no-tls",
        "--from",
        "app@mxpress.test",
        "--to",
        "nobody@example.test",
        "--body",
        "hi",
    )
    assert code == 1
    assert err.count("\n") == 1 and "550" in err


def test_send_eml_file(server: AiosmtpdServer, handler: RecordingHandler, tmp_path: Path) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: a@x.test\nTo: b@example.test\nSubject: file\n\nbody\n")
    code, _, err = run(
        "send",
        "--server",
        f"{server.host}:{server.port}",
        "--no-tls",
        "--from",
        "a@x.test",
        "--to",
        "b@example.test",
        "--file",
        str(eml),
    )
    assert code == 0, err
    assert handler.wait_for_messages(1)[0].content.endswith(b"body\r\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server", "nohost:x"], "--server must be HOST:PORT"),
        (["--server", "127.0.0.1:1", "--body", "x", "--file", __file__], "exactly one"),
        (["--server", "127.0.0.1:1", "--body", "x", "--user", "u"], "go together"),
    ],
)
def test_bad_arguments_get_one_line(args: list[str], message: str) -> None:
    code, _, err = run("send", "--from", "a@x.test", "--to", "b@example.test", *args)
    assert code == 1 and message in err and err.count("\n") == 1


def test_header_injection_refused() -> None:
    code, _, err = run(
        "send",
        "--server",
        "127.0.0.1:1",
        "--from",
        "a@x.test",
        "--to",
        "b@example.test",
        "--subject",
        "hi\r\nBcc: victim@example.test",
        "--body",
        "x",
    )
    assert code == 1 and "header" in err.lower()


def test_dead_server() -> None:
    code, _, err = run(
        "send",
        "--server",
        "127.0.0.1:1",
        "--no-tls",
        "--from",
        "a@x.test",
        "--to",
        "b@example.test",
        "--body",
        "x",
    )
    assert code == 1 and "cannot connect" in err and "127.0.0.1:1" in err
