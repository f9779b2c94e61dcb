"""The lab's helpers really work: a real smtp-sink, a real private Postfix smtpd and aiosmtpd,
driven by Python's smtplib (and raw sockets where smtplib cannot say it). Loopback only."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import servers
from tests.lab.servers import (
    PostfixServer,
    RecordingHandler,
    SmtpSink,
    TestCA,
    aiosmtpd_server,
    check_loopback,
    free_port,
    make_test_ca,
    postfix_smtpd,
    smtp_sink,
)

pytestmark = pytest.mark.lab

HELO = "client.test"  # always explicit: smtplib would otherwise look up our own name
SENDER = "sender@src.test"
MESSAGE = b"From: sender@src.test\r\nTo: user@example.test\r\nSubject: lab\r\n\r\nhello lab\r\n"


def need(binary: str) -> None:
    """Skip if `binary` is missing, except in CI (CI=true), where a missing peer must fail."""
    if servers.find_binary(binary) is None:
        message = f"{binary} is not installed (Debian package postfix)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; the CI image must provide it")
        pytest.skip(message)


def test_missing_binary_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "find_binary", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="smtp-sink is not installed"):
        need("smtp-sink")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        need("smtp-sink")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    need("smtp-sink")
    with smtp_sink() as server:
        yield server


@pytest.fixture
def postfix(tmp_path: Path, ca: TestCA) -> Iterator[PostfixServer]:
    need("postfix")
    with postfix_smtpd(
        tls_cert=ca.cert_pem,
        tls_key=ca.key_pem,
        workdir=tmp_path,
        reject_recipients=["bad@example.test"],
        defer_recipients=["busy.example.test"],  # a whole domain
    ) as server:
        yield server


def _tls_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> None:
    """Run a TLS handshake in memory (no sockets) with the client checking `name`."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for key, obj in (("client", client), ("server", server)):
            if not done[key]:
                try:
                    obj.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


# ------------------------------------------------------------------------------------ basics


def test_only_loopback_addresses_are_accepted() -> None:
    assert check_loopback("127.0.0.3") == "127.0.0.3"
    for bad in ("10.0.0.1", "0.0.0.0", "::1", "localhost", "192.0.2.1"):
        with pytest.raises(ValueError):
            check_loopback(bad)
    with pytest.raises(ValueError):
        smtp_sink(host="0.0.0.0")
    with pytest.raises(ValueError):
        aiosmtpd_server(host="192.0.2.1")


def test_test_ca_cert_covers_every_name(ca: TestCA) -> None:
    for path in (ca.ca_pem, ca.cert_pem, ca.key_pem, ca.combined_pem):
        assert path.read_bytes().startswith(b"-----BEGIN")
    assert set(servers.DEFAULT_CERT_NAMES) <= set(ca.names)
    for name in servers.DEFAULT_CERT_NAMES:
        _tls_handshake(ca.server_context(), ca.client_context(), name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(ca.server_context(), ca.client_context(), "other.test")


# ------------------------------------------------------------------------------------ smtp-sink


def test_smtp_sink_accepts_and_counts(sink: SmtpSink) -> None:
    assert sink.message_count() == 0
    with smtplib.SMTP(sink.host, sink.port, local_hostname=HELO, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("pipelining")
        assert not client.has_extn("chunking")
        for _ in range(3):
            assert client.sendmail(SENDER, ["user@example.test"], MESSAGE) == {}
    assert sink.wait_for_messages(3) == 3
    # smtp-sink counts a session when it ends, which may print after the messages' count.
    deadline = time.monotonic() + 10
    while sink.counters()["sess"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.counters()["sess"] >= 1


def test_smtp_sink_extra_args_and_clean_stop() -> None:
    need("smtp-sink")
    # -f RCPT: hard-reject every recipient (5xx), so nothing is counted.
    server = smtp_sink(extra_args=("-f", "RCPT"), hostname="sink.test")
    with server, smtplib.SMTP(server.host, server.port, local_hostname=HELO) as client:
        code, banner = client.ehlo()
        assert code == 250 and banner.startswith(b"sink.test")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail(SENDER, ["user@example.test"], MESSAGE)
    assert server.message_count() == 0
    assert server.proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()


# ------------------------------------------------------------------------------------ Postfix


def test_postfix_advertises_pipelining_chunking_starttls(postfix: PostfixServer) -> None:
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname=HELO, timeout=10) as client:
        client.ehlo()
        for ext in ("pipelining", "chunking", "starttls", "8bitmime", "smtputf8", "dsn"):
            assert client.has_extn(ext), ext


def test_postfix_accepts_mail_over_verified_starttls(postfix: PostfixServer, ca: TestCA) -> None:
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname=HELO, timeout=10) as client:
        client.starttls(context=ca.client_context())  # verifies the cert for 127.0.0.1
        client.ehlo()
        assert client.has_extn("chunking") and not client.has_extn("starttls")
        assert client.sendmail(SENDER, ["user@example.test", "two@example.test"], MESSAGE) == {}
    assert postfix.wait_for_messages(1) == 1
    assert _wait(lambda: postfix.recipient_count() == 2)
    assert "TLS connection established" in postfix.log()


def test_postfix_rejects_and_defers_programmed_recipients(postfix: PostfixServer) -> None:
    with smtplib.SMTP(postfix.host, postfix.port, local_hostname=HELO, timeout=10) as client:
        refused = client.sendmail(
            SENDER, ["bad@example.test", "user@busy.example.test", "ok@example.test"], MESSAGE
        )
        assert refused["bad@example.test"][0] == 550
        assert refused["bad@example.test"][1].startswith(b"5.1.1")
        assert refused["user@busy.example.test"][0] == 450
        assert "ok@example.test" not in refused
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail(SENDER, ["bad@example.test"], MESSAGE)
        assert info.value.recipients["bad@example.test"][0] == 550
    assert postfix.wait_for_messages(1) == 1
    assert _wait(lambda: postfix.counters()["rejected"] == 3)


def test_postfix_bdat_really_works(postfix: PostfixServer) -> None:
    """CHUNKING is not just advertised: BDAT LAST is accepted and the message queued."""
    with socket.create_connection(postfix.address, timeout=10) as sock:
        f = sock.makefile("rb")
        assert _reply(f).startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        assert b"CHUNKING" in _reply(f)
        # Pipelined: MAIL, RCPT and the whole message in one flight.
        sock.sendall(
            b"MAIL FROM:<sender@src.test>\r\nRCPT TO:<user@example.test>\r\n"
            + b"BDAT %d LAST\r\n" % len(MESSAGE)
            + MESSAGE
        )
        assert _reply(f).startswith(b"250")
        assert _reply(f).startswith(b"250")
        assert _reply(f).startswith(b"250 2.0.0 Ok")
        sock.sendall(b"QUIT\r\n")
    assert postfix.wait_for_messages(1) == 1


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_postfix_tls_session_resumption(
    postfix: PostfixServer, ca: TestCA, version: ssl.TLSVersion
) -> None:
    ctx = ca.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    session, reused = _starttls_session(postfix.address, ctx, None)
    assert not reused
    _, reused = _starttls_session(postfix.address, ctx, session)
    assert reused, f"{version.name} session was not resumed"


def test_two_postfix_instances_share_a_port_on_different_addresses(
    tmp_path: Path, ca: TestCA
) -> None:
    need("postfix")
    port = free_port("127.0.0.2")
    with (
        postfix_smtpd("127.0.0.2", port, workdir=tmp_path, hostname="mx1.test") as mx1,
        postfix_smtpd("127.0.0.3", port, workdir=tmp_path, hostname="mx2.test") as mx2,
    ):
        # Default TLS: each made its own CA, whose cert also covers the listen address.
        assert mx1.ca is not None and mx1.ca_pem is not None and "127.0.0.2" in mx1.ca.names
        for server, name in ((mx1, b"mx1.test"), (mx2, b"mx2.test")):
            assert server.ca is not None
            with smtplib.SMTP(server.host, port, local_hostname=HELO, timeout=10) as client:
                client.starttls(context=server.ca.client_context())
                code, text = client.ehlo()
                assert code == 250 and text.startswith(name)
                client.sendmail(SENDER, ["user@example.test"], MESSAGE)
        assert mx1.wait_for_messages(1) == 1 and mx2.wait_for_messages(1) == 1
        assert mx1.message_count() == 1 and mx2.message_count() == 1
        pgids = [mx1.proc.pid, mx2.proc.pid]
    for pgid in pgids:
        assert servers._live_group_members(pgid) == []
    for host in ("127.0.0.2", "127.0.0.3"):
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=1).close()
    assert not (tmp_path / f"postfix-127.0.0.2-{port}").exists()  # scratch link removed


def test_postfix_auth_after_starttls(tmp_path: Path) -> None:
    need("postfix")
    with (
        postfix_smtpd(workdir=tmp_path, auth={"alice": "s3cret"}, auth_required=True) as server,
        smtplib.SMTP(server.host, server.port, local_hostname=HELO, timeout=10) as client,
    ):
        assert server.ca is not None
        client.ehlo()
        assert not client.has_extn("auth")  # smtpd_tls_auth_only
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail(SENDER, ["user@example.test"], MESSAGE)
        assert info.value.recipients["user@example.test"][0] == 554
        client.starttls(context=server.ca.client_context())
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        client.user, client.password = "alice", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.auth("PLAIN", client.auth_plain)
        assert failed.value.smtp_code == 535
        client.user, client.password = "alice", "s3cret"
        assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235
        assert client.sendmail(SENDER, ["user@example.test"], MESSAGE) == {}
        assert server.wait_for_messages(1) == 1
        assert server.auth_attempts == [("alice", False), ("alice", True)]
        assert "sasl_username=alice" in server.log()


def test_postfix_without_tls(tmp_path: Path) -> None:
    need("postfix")
    with (
        postfix_smtpd(tls=False, workdir=tmp_path) as server,
        smtplib.SMTP(server.host, server.port, local_hostname=HELO) as client,
    ):
        client.ehlo()
        assert not client.has_extn("starttls") and client.has_extn("chunking")
        assert server.ca is None


# ------------------------------------------------------------------------------------ aiosmtpd


def test_aiosmtpd_records_envelopes_and_programmed_replies() -> None:
    handler = RecordingHandler(
        rcpt_replies={"Busy@example.test": "450 4.2.1 mailbox busy", "gone@example.test": "550"}
    )
    with aiosmtpd_server(handler) as server:
        assert server.connections == 0
        with smtplib.SMTP(server.host, server.port, local_hostname=HELO, timeout=10) as client:
            refused = client.sendmail(
                SENDER,
                ["ok@example.test", "busy@example.test", "gone@example.test"],
                MESSAGE,
            )
        assert refused == {
            "busy@example.test": (450, b"4.2.1 mailbox busy"),
            "gone@example.test": (550, b""),
        }
        (message,) = handler.wait_for_messages(1)
        assert server.message_count() == 1
        assert message.mail_from == SENDER
        assert message.rcpt_tos == ["ok@example.test"]
        assert message.content == MESSAGE
        assert message.helo == HELO and not message.tls
        assert handler.rcpt_attempts == [
            "ok@example.test",
            "busy@example.test",
            "gone@example.test",
        ]
        assert server.connections == 1


def test_aiosmtpd_mail_and_data_failures() -> None:
    handler = RecordingHandler(mail_reply="421 4.3.2 shutting down")
    with aiosmtpd_server(handler) as server:
        with (
            smtplib.SMTP(server.host, server.port, local_hostname=HELO) as client,
            pytest.raises(smtplib.SMTPSenderRefused),
        ):
            client.sendmail(SENDER, ["a@example.test"], MESSAGE)
        handler.mail_reply = None
        handler.data_reply = "451 4.3.0 try again"
        with smtplib.SMTP(server.host, server.port, local_hostname=HELO) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail(SENDER, ["a@example.test"], MESSAGE)
            assert info.value.smtp_code == 451
        assert handler.messages == []


@pytest.mark.parametrize("reset", [False, True])
def test_aiosmtpd_drops_the_connection(reset: bool) -> None:
    handler = RecordingHandler(drop_on=["RCPT"], drop_with_reset=reset)
    with (
        aiosmtpd_server(handler) as server,
        smtplib.SMTP(server.host, server.port, local_hostname=HELO, timeout=5) as client,
    ):
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionResetError)):
            client.rcpt("a@example.test")
    assert handler.rcpt_attempts == ["a@example.test"] and handler.messages == []


def test_aiosmtpd_delay() -> None:
    handler = RecordingHandler(delays={"MAIL": 0.2})
    with (
        aiosmtpd_server(handler) as server,
        smtplib.SMTP(server.host, server.port, local_hostname=HELO) as client,
    ):
        client.ehlo()
        start = time.monotonic()
        assert client.mail(SENDER)[0] == 250
        assert time.monotonic() - start >= 0.19


def test_aiosmtpd_starttls_and_auth(ca: TestCA) -> None:
    handler = RecordingHandler()
    with aiosmtpd_server(
        handler,
        tls_context=ca.server_context(),
        require_starttls=True,
        auth={"alice": "s3cret"},
        auth_required=True,
    ) as server:
        with smtplib.SMTP(server.host, server.port, local_hostname=HELO, timeout=10) as client:
            client.ehlo()
            assert client.has_extn("starttls") and not client.has_extn("auth")
            client.starttls(context=ca.client_context())
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("alice", "wrong")
            client.login("alice", "s3cret")
            client.sendmail(SENDER, ["a@example.test"], MESSAGE)
        (message,) = handler.wait_for_messages(1)
        assert message.tls and message.auth_login == "alice"


# ------------------------------------------------------------------------------------ helpers


def _wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _reply(f: object) -> bytes:
    """Read one (possibly multi-line) SMTP reply from a binary file object."""
    lines = []
    while True:
        line = f.readline()  # type: ignore[attr-defined]
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def _starttls_session(
    address: tuple[str, int], ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    """EHLO, STARTTLS, EHLO, QUIT, offering `session`; returns (new session, was it reused)."""
    sock = socket.create_connection(address, timeout=10)
    f = sock.makefile("rb")
    assert _reply(f).startswith(b"220")
    sock.sendall(b"EHLO client.test\r\n")
    _reply(f)
    sock.sendall(b"STARTTLS\r\n")
    assert _reply(f).startswith(b"220")
    tls = ctx.wrap_socket(sock, server_hostname="mx1.test", session=session)
    tf = tls.makefile("rb")
    # The TLS 1.3 ticket arrives after the handshake: read a reply before taking .session.
    tls.sendall(b"EHLO client.test\r\n")
    _reply(tf)
    tls.sendall(b"QUIT\r\n")
    _reply(tf)
    result = (tls.session, bool(tls.session_reused))
    tls.close()
    return result
