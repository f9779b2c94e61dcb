"""Sessions against real servers on loopback: aiosmtpd, Postfix smtp-sink, Postfix smtpd."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import mxpress
from mxpress.errors import (
    AuthenticationError,
    PermanentDeliveryError,
    ReadError,
    TLSError,
    TransientDeliveryError,
    TransportTimeout,
)
from tests.conftest import start_lab_server
from tests.lab.servers import (
    AiosmtpdServer,
    PostfixServer,
    RecordingHandler,
    SmtpSink,
    TestCA,
    aiosmtpd_server,
)

MSG = b"From: a@x.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nhello\r\n.\r\n..dots\r\n"


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def smtpd(handler: RecordingHandler, lab_ca: TestCA) -> Iterator[AiosmtpdServer]:
    """aiosmtpd with STARTTLS (lab CA) and AUTH (user/secret) offered after TLS."""
    server = start_lab_server(
        lambda: aiosmtpd_server(
            handler, tls_context=lab_ca.server_context(), auth={"user": "secret"}
        )
    )
    with server:
        yield server


# --- aiosmtpd: programmable faults ------------------------------------------------------


async def test_starttls_auth_and_per_recipient_replies(
    smtpd: AiosmtpdServer, handler: RecordingHandler, lab_ca: TestCA
) -> None:
    handler.rcpt_replies = {"gone@example.test": "550 5.1.1 no such user"}
    async with await mxpress.connect(
        smtpd.host,
        smtpd.port,
        tls="required",
        cafile=str(lab_ca.ca_pem),
        username="user",
        password="secret",
        timeout=10,
    ) as session:
        assert session.tls_info is not None and session.tls_info.version is not None
        assert "PLAIN" in session.capabilities.auth
        result = await session.send("a@x.test", ["b@example.test", "gone@example.test"], MSG)
    assert result.accepted == ["b@example.test"]
    refused = result.rejected["gone@example.test"]
    assert refused is not None and refused.code == 550 and refused.enhanced == "5.1.1"
    [received] = handler.wait_for_messages(1)
    assert received.tls and received.auth_login == "user"
    assert received.rcpt_tos == ["b@example.test"]
    assert received.content.endswith(b"hello\r\n.\r\n..dots\r\n")


async def test_wrong_password(smtpd: AiosmtpdServer, lab_ca: TestCA) -> None:
    with pytest.raises(AuthenticationError) as info:
        await mxpress.connect(
            smtpd.host,
            smtpd.port,
            tls="required",
            cafile=str(lab_ca.ca_pem),
            username="user",
            password="wrong",
            timeout=10,
        )
    assert info.value.reply is not None and info.value.reply.code == 535
    assert "user" in str(info.value) and info.value.phase == "auth"


async def test_auth_refused_over_plaintext(smtpd: AiosmtpdServer) -> None:
    with pytest.raises(AuthenticationError, match="unencrypted"):
        await mxpress.connect(
            smtpd.host, smtpd.port, tls="none", username="user", password="secret", timeout=10
        )


async def test_certificate_verified_by_default(smtpd: AiosmtpdServer) -> None:
    # The lab CA is not in the system store: verification must fail, naming the phase.
    with pytest.raises(TLSError) as info:
        await mxpress.connect(smtpd.host, smtpd.port, tls="required", timeout=10)
    assert info.value.phase == "tls" and "certificate" in str(info.value)
    # ...unless the caller explicitly opts out.
    session = await mxpress.connect(
        smtpd.host, smtpd.port, tls="required", verify=False, timeout=10
    )
    assert session.tls_info is not None
    await session.quit()


async def test_required_tls_fails_when_not_offered(handler: RecordingHandler) -> None:
    with start_lab_server(lambda: aiosmtpd_server(handler)) as plain:
        with pytest.raises(TLSError, match="does not offer STARTTLS"):
            await mxpress.connect(plain.host, plain.port, tls="required", timeout=10)
        # Opportunistic goes on in plaintext.
        async with await mxpress.connect(plain.host, plain.port, timeout=10) as session:
            assert session.tls_info is None
            await session.send("a@x.test", ["b@example.test"], MSG)
    assert len(handler.messages) == 1


async def test_implicit_tls(handler: RecordingHandler, lab_ca: TestCA) -> None:
    server = start_lab_server(
        lambda: aiosmtpd_server(handler, tls_context=lab_ca.server_context(), implicit_tls=True)
    )
    with server:
        async with await mxpress.connect(
            server.host, server.port, tls="implicit", cafile=str(lab_ca.ca_pem), timeout=10
        ) as session:
            assert session.tls_info is not None
            await session.send("a@x.test", ["b@example.test"], MSG)
    # (aiosmtpd marks only STARTTLS sessions as TLS; the client saw the handshake above.)
    assert handler.wait_for_messages(1)[0].rcpt_tos == ["b@example.test"]


async def test_disconnect_mid_transaction(smtpd: AiosmtpdServer, handler: RecordingHandler) -> None:
    handler.drop_on = {"RCPT"}
    session = await mxpress.connect(smtpd.host, smtpd.port, tls="none", timeout=10)
    with pytest.raises(ReadError) as info:
        await session.send("a@x.test", ["b@example.test"], MSG)
    assert info.value.phase in ("mail", "rcpt")
    assert session.closed and not session.body_sent_before_failure


async def test_phase_timeout(smtpd: AiosmtpdServer, handler: RecordingHandler) -> None:
    handler.delays = {"MAIL": 2.0}
    timeouts = mxpress.Timeouts.uniform(10).with_(mail=0.3)
    session = await mxpress.connect(smtpd.host, smtpd.port, tls="none", timeout=timeouts)
    with pytest.raises(TransportTimeout) as info:
        await session.send("a@x.test", ["b@example.test"], MSG)
    assert info.value.phase == "mail" and isinstance(info.value, TimeoutError)


async def test_server_refuses_sender(smtpd: AiosmtpdServer, handler: RecordingHandler) -> None:
    handler.mail_reply = "553 5.7.1 sender not allowed"
    async with await mxpress.connect(smtpd.host, smtpd.port, tls="none", timeout=10) as s:
        with pytest.raises(PermanentDeliveryError) as info:
            await s.send("a@x.test", ["b@example.test"], MSG)
    assert info.value.phase == "mail" and info.value.reply is not None
    assert info.value.reply.code == 553


# --- Postfix smtp-sink: PIPELINING ------------------------------------------------------


async def test_pipelined_stream_into_smtp_sink(sink: SmtpSink) -> None:
    before = sink.message_count()
    async with await mxpress.connect(sink.host, sink.port, tls="none", timeout=10) as session:
        assert session.capabilities.pipelining and not session.capabilities.chunking
        results = await session.send_many(
            [("a@x.test", [f"r{i}@example.test"], MSG) for i in range(300)]
        )
    assert all(r.ok for r in results)
    assert sink.wait_for_messages(before + 300) == before + 300


# --- Postfix smtpd: STARTTLS, CHUNKING, TLS resumption ---------------------------------


async def test_postfix_chunking_starttls_and_resumption(
    postfix: PostfixServer, lab_ca: TestCA
) -> None:
    store = mxpress.TLSSessionStore()
    resumed = []
    before = postfix.message_count()
    for _ in range(3):
        async with await mxpress.connect(
            postfix.host,
            postfix.port,
            tls="required",
            cafile=str(lab_ca.ca_pem),
            server_hostname="mx1.test",
            tls_sessions=store,
            timeout=20,
        ) as session:
            caps = session.capabilities
            assert caps.chunking and caps.pipelining and caps.smtputf8
            result = await session.send("a@x.test", ["b@example.test"], MSG)
            assert result.ok
            resumed.append(session.tls_resumed)
    assert resumed == [False, True, True]
    assert postfix.wait_for_messages(before + 3) >= before + 3


async def test_postfix_refuses_and_defers_recipients(postfix: PostfixServer) -> None:
    async with await mxpress.connect(postfix.host, postfix.port, tls="none", timeout=20) as session:
        result = await session.send(
            "a@x.test", ["ok@example.test", "refused@example.test", "later@example.test"], MSG
        )
        assert result.accepted == ["ok@example.test"]
        assert result.rejected["refused@example.test"].code == 550  # type: ignore[union-attr]
        assert result.rejected["later@example.test"].code == 450  # type: ignore[union-attr]
        with pytest.raises(TransientDeliveryError):
            await session.send("a@x.test", ["later@example.test"], MSG)
        # The session is reset and still good after a refused transaction.
        again = await session.send("a@x.test", ["ok@example.test"], MSG)
        assert again.ok


async def test_utf8_envelope_with_postfix(postfix: PostfixServer) -> None:
    data = "From: 张三 <张三@例子.test>\r\nSubject: 你好\r\n\r\n你好\r\n".encode()
    async with await mxpress.connect(postfix.host, postfix.port, tls="none", timeout=20) as session:
        result = await session.send("张三@例子.test", ["李四@example.test"], data)
        assert result.ok


async def test_concurrent_sends_on_one_session_are_serialised(sink: SmtpSink) -> None:
    async with await mxpress.connect(sink.host, sink.port, tls="none", timeout=10) as session:
        results = await asyncio.gather(
            *(session.send("a@x.test", [f"r{i}@example.test"], MSG) for i in range(20))
        )
    assert all(r.ok for r in results)


async def test_probe_asks_without_delivering(postfix: PostfixServer) -> None:
    before = postfix.message_count()
    async with await mxpress.connect(postfix.host, postfix.port, tls="none", timeout=20) as session:
        result = await session.probe("a@x.test", ["ok@example.test", "refused@example.test"])
        assert result.mail_reply is not None and result.mail_reply.ok
        assert result.recipients["ok@example.test"].code == 250  # type: ignore[union-attr]
        assert result.recipients["refused@example.test"].code == 550  # type: ignore[union-attr]
        # The session is clean afterwards: a real send works.
        assert (await session.send("a@x.test", ["ok@example.test"], MSG)).ok
    assert postfix.wait_for_messages(before + 1) == before + 1
