"""RFC 2920 / RFC 3030 flight plans, counted against the scripted in-memory server."""

from __future__ import annotations

import pytest

from mxpress.client.session import Session, SessionOptions, TLSMode, establish
from mxpress.errors import (
    DeliveryError,
    LocalProtocolError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportError,
)
from mxpress.protocol.client import Outgoing
from mxpress.transport.scripted import ScriptedServer, ScriptedStream

MSG = b"Subject: hi\r\n\r\nhello\r\n"


async def open_scripted(server: ScriptedServer) -> tuple[Session, ScriptedStream]:
    stream = ScriptedStream(server)
    session = await establish(stream, SessionOptions(host="scripted", tls=TLSMode.NONE))
    return session, stream


async def flights_for(server: ScriptedServer, messages: list[Outgoing]) -> tuple[int, list]:
    session, stream = await open_scripted(server)
    before = stream.round_trips
    results = await session.send_many(messages)
    return stream.round_trips - before, results


def msgs(n: int, rcpts: int = 1, data: bytes = MSG) -> list[Outgoing]:
    return [
        Outgoing(f"s{i}@a.test", [f"r{i}.{j}@b.test" for j in range(rcpts)], data) for i in range(n)
    ]


# (server capabilities, messages, recipients each, expected round trips)
FLIGHT_PLANS = [
    pytest.param(dict(pipelining=True), 1, 1, 2, id="pipelining: MAIL+RCPT+DATA | body"),
    pytest.param(dict(pipelining=True), 1, 5, 2, id="pipelining: 5 recipients same flight"),
    pytest.param(dict(pipelining=True), 10, 1, 11, id="pipelining stream: N+1"),
    pytest.param(dict(pipelining=True), 100, 2, 101, id="pipelining stream of 100"),
    pytest.param(dict(pipelining=True, chunking=True), 1, 1, 1, id="chunking: one flight"),
    pytest.param(dict(pipelining=True, chunking=True), 10, 3, 10, id="chunking stream: N"),
    pytest.param(dict(pipelining=False), 1, 1, 4, id="lock-step: MAIL RCPT DATA body"),
    pytest.param(dict(pipelining=False), 1, 3, 6, id="lock-step: 3 RCPTs"),
    pytest.param(dict(pipelining=False), 3, 1, 12, id="lock-step stream"),
    pytest.param(dict(pipelining=False, chunking=True), 1, 2, 4, id="lock-step BDAT"),
]


@pytest.mark.parametrize(("caps", "n", "rcpts", "expected"), FLIGHT_PLANS)
async def test_flight_plan(caps: dict, n: int, rcpts: int, expected: int) -> None:
    server = ScriptedServer(**caps)
    trips, results = await flights_for(server, msgs(n, rcpts))
    assert trips == expected
    assert all(r.ok for r in results)
    assert len(server.messages) == n
    for i, delivered in enumerate(server.messages):
        assert delivered.sender == f"s{i}@a.test"
        assert delivered.recipients == [f"r{i}.{j}@b.test" for j in range(rcpts)]
        assert delivered.data == MSG


async def test_stream_pipelines_body_with_next_transaction() -> None:
    server = ScriptedServer(pipelining=True)
    session, stream = await open_scripted(server)
    await session.send_many(msgs(2))
    # The second MAIL was written in the same write as the first body.
    verbs = [c.split(" ")[0] for c in server.commands if c]
    assert verbs[:5] == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL"]
    assert stream.writes == 4  # EHLO | MAIL RCPT DATA | body MAIL RCPT DATA | body
    assert stream.round_trips == 1 + 3


async def test_some_recipients_refused_others_delivered() -> None:
    server = ScriptedServer(
        rcpt_replies={
            "bad@b.test": "550 5.1.1 <bad@b.test>: no such user",
            "later@b.test": "450 4.2.0 mailbox busy",
        }
    )
    session, _ = await open_scripted(server)
    result = await session.send("s@a.test", ["ok@b.test", "bad@b.test", "later@b.test"], MSG)
    assert result.ok
    assert result.accepted == ["ok@b.test"]
    rejected = result.rejected
    assert set(rejected) == {"bad@b.test", "later@b.test"}
    assert rejected["bad@b.test"] is not None and rejected["bad@b.test"].code == 550
    assert rejected["bad@b.test"].enhanced == "5.1.1"
    assert result.reply_for("ok@b.test") is not None
    assert result.reply_for("ok@b.test").code == 250  # the final reply, after data
    assert server.messages[0].recipients == ["ok@b.test"]


async def test_no_accepted_recipient_is_reset_not_sent() -> None:
    server = ScriptedServer(rcpt_replies={"bad@b.test": "550 5.1.1 no such user"})
    session, stream = await open_scripted(server)
    with pytest.raises(PermanentDeliveryError) as info:
        await session.send("s@a.test", ["bad@b.test"], MSG)
    assert info.value.recipients["bad@b.test"].code == 550
    assert server.messages == []
    assert "hello" not in "".join(server.commands)
    # The RSET rides in the next transaction's first flight: no extra round trip.
    trips = stream.round_trips
    await session.send("s@a.test", ["good@b.test"], MSG)
    assert stream.round_trips - trips == 2
    verbs = [c.split(" ")[0] for c in server.commands]
    assert verbs[verbs.index("RSET") :] == ["RSET", "MAIL", "RCPT", "DATA"]
    assert len(server.messages) == 1


async def test_lockstep_never_sends_data_without_recipients() -> None:
    server = ScriptedServer(pipelining=False, rcpt_replies={"x@b.test": "450 4.7.1 try later"})
    session, stream = await open_scripted(server)
    before = stream.round_trips
    with pytest.raises(TransientDeliveryError):
        await session.send("s@a.test", ["x@b.test"], MSG)
    assert stream.round_trips - before == 2  # MAIL, RCPT; no DATA
    assert "DATA" not in server.commands


async def test_sender_refused() -> None:
    server = ScriptedServer(mail_reply="553 5.7.1 sender rejected")
    session, _ = await open_scripted(server)
    with pytest.raises(PermanentDeliveryError) as info:
        await session.send("s@a.test", ["r@b.test"], MSG)
    assert info.value.phase == "mail"
    assert info.value.reply is not None and info.value.reply.code == 553
    assert "553" in str(info.value) and "scripted" in str(info.value)


async def test_size_limit_checked_before_sending() -> None:
    server = ScriptedServer(size=100)
    session, stream = await open_scripted(server)
    before = stream.round_trips
    with pytest.raises(PermanentDeliveryError, match="SIZE"):
        await session.send("s@a.test", ["r@b.test"], b"x" * 200)
    assert stream.round_trips == before
    assert not any(c.startswith("MAIL") for c in server.commands)


async def test_size_param_and_8bitmime() -> None:
    server = ScriptedServer()
    session, _ = await open_scripted(server)
    data = "Subject: é\r\n\r\ncafé\r\n".encode()
    await session.send("s@a.test", ["r@b.test"], data)
    mail = next(c for c in server.commands if c.startswith("MAIL"))
    assert f"SIZE={len(data)}" in mail
    assert "BODY=8BITMIME" in mail
    assert "SMTPUTF8" in mail  # UTF-8 in the header section


async def test_unicode_address_needs_smtputf8() -> None:
    server = ScriptedServer(smtputf8=False)
    session, _ = await open_scripted(server)
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        await session.send("s@a.test", ["用户@例子.测试"], MSG)
    assert not any(c.startswith("MAIL") for c in server.commands)
    # The session is still fine for the next message.
    await session.send("s@a.test", ["r@b.test"], MSG)
    assert len(server.messages) == 1


async def test_dot_stuffing_and_crlf_reach_the_server_intact() -> None:
    server = ScriptedServer()
    session, _ = await open_scripted(server)
    body = b"Subject: dots\n\n.\n..leading\nbare\rcr\r\n.end"
    await session.send("s@a.test", ["r@b.test"], body)
    assert (
        server.messages[0].data == b"Subject: dots\r\n\r\n.\r\n..leading\r\nbare\r\ncr\r\n.end\r\n"
    )


async def test_421_mid_stream_breaks_the_session() -> None:
    def hook(line: str) -> str | None:
        return "421 4.3.2 shutting down" if line.startswith("MAIL FROM:<s1@") else None

    server = ScriptedServer(pipelining=False, hook=hook)
    session, _ = await open_scripted(server)
    with pytest.raises(TransientDeliveryError) as info:
        await session.send_many(msgs(3))
    assert info.value.reply is not None and info.value.reply.code == 421
    assert info.value.phase == "mail"
    assert session.closed
    assert session.body_sent_before_failure  # message 0 went out before the 421
    assert len(server.messages) == 1


async def test_disconnect_before_any_body_is_safe_to_retry() -> None:
    def hook(line: str) -> str | None:
        return "421 4.4.2 idle timeout" if line.startswith("MAIL") else None

    server = ScriptedServer(hook=hook)
    session, _ = await open_scripted(server)
    with pytest.raises(TransientDeliveryError):
        await session.send("s@a.test", ["r@b.test"], MSG)
    assert session.closed
    assert not session.body_sent_before_failure
    with pytest.raises(TransportError, match="closed"):
        await session.send("s@a.test", ["r@b.test"], MSG)


async def test_data_refused_after_recipients_accepted_then_reset() -> None:
    server = ScriptedServer(data_reply="451 4.3.0 try again later")
    session, stream = await open_scripted(server)
    results = await session.send_many(msgs(2))
    assert [r.ok for r in results] == [False, False]
    assert isinstance(results[0].error, DeliveryError)
    assert results[0].error.phase == "data"
    verbs = [c.split(" ")[0] for c in server.commands]
    # The second transaction is preceded by RSET in the same flight.
    assert verbs[1:8] == ["MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]
    assert verbs.count("RSET") == 1
    assert stream.round_trips == 1 + 2  # EHLO, then one flight per message


async def test_timings_recorded() -> None:
    server = ScriptedServer()
    session, _ = await open_scripted(server)
    result = await session.send("s@a.test", ["r@b.test"], MSG)
    assert {"mail", "rcpt", "data", "end_of_data", "total"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())
    assert {"banner", "ehlo"} <= set(session.timings)


async def test_sender_validated_once_per_stream_but_always_checked() -> None:
    server = ScriptedServer()
    session, _ = await open_scripted(server)
    results = await session.send_many(
        [
            Outgoing("s@a.test", ["r1@b.test"], MSG),
            Outgoing("s@a.test", ["r2@b.test"], MSG),  # same sender: not re-validated
            Outgoing("bad sender@a.test", ["r3@b.test"], MSG),  # a new one is checked
            Outgoing("s@a.test", ["r4@b.test"], MSG),
        ]
    )
    assert [r.ok for r in results] == [True, True, False, True]
    assert isinstance(results[2].error, LocalProtocolError)
    assert not any("bad sender" in c for c in server.commands)


async def test_timings_recorded_when_every_recipient_is_refused() -> None:
    # No end of data ever comes; MAIL and RCPT still took time, and the log shows it.
    server = ScriptedServer(rcpt_replies={"r@b.test": "550 5.1.1 no such user"})
    session, _ = await open_scripted(server)
    [result] = await session.send_many([Outgoing("s@a.test", ["r@b.test"], MSG)])
    assert not result.ok
    assert {"mail", "rcpt", "total"} <= set(result.timings)
    assert "end_of_data" not in result.timings
    assert result.timings["total"] >= result.timings["mail"] >= 0
