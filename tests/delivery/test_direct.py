"""Direct (MX) delivery end to end on loopback: real DNS zone, real SMTP servers."""

from __future__ import annotations

import asyncio
import threading

from mxpress.delivery.result import Outcome
from mxpress.mailer import Mailer
from mxpress.message import build_message
from mxpress.sync import SyncMailer
from tests.delivery.conftest import MailLab

MSG = b"From: app@sender.test\r\nTo: ann@mail.test\r\nSubject: hi\r\n\r\nhello\r\n"


def mailer(lab: MailLab, **kw: object) -> Mailer:
    return Mailer(nameservers=lab.nameservers, port=lab.port, timeout=10, **kw)  # type: ignore[arg-type]


async def test_first_mx_takes_it(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        result = await m.send(MSG)
    assert result.ok
    delivered = result.accepted["ann@mail.test"]
    assert delivered.host == f"127.0.0.2:{mail_lab.port}"
    assert delivered.reply is not None and delivered.reply.code == 250
    assert mail_lab.mx1_handler.wait_for_messages(1)[0].rcpt_tos == ["ann@mail.test"]
    assert {
        "dns_mx",
        "dns_addr",
        "pool",
        "connect",
        "banner",
        "ehlo",
        "mail",
        "end_of_data",
    } <= set(result.timings)


async def test_dns_cache_state_per_attempt(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        first = await m.send(MSG)
        second = await m.send(MSG)
    assert first.dns == {"mail.test": "miss"}
    assert second.dns == {"mail.test": "hit"}
    assert second.timings["dns_mx"] < first.timings["dns_mx"]
    assert first.timings["dns_addr"] > 0 and second.timings["dns_addr"] == 0  # cached


async def test_first_mx_down_second_takes_it(mail_lab: MailLab) -> None:
    before = mail_lab.mx2.message_count()
    async with mailer(mail_lab) as m:
        result = await m.send(MSG, recipients=["bob@firstdown.test"])
    assert result.ok, result.recipients
    assert result.accepted["bob@firstdown.test"].host == f"127.0.0.3:{mail_lab.port}"
    assert mail_lab.mx2.wait_for_messages(before + 1) == before + 1


async def test_null_mx_is_permanent(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        result = await m.send(MSG, recipients=["x@nullmx.test"])
    failed = result.rejected["x@nullmx.test"]
    assert failed.outcome is Outcome.BOUNCED
    assert "null MX" in failed.reason


async def test_nxdomain_is_permanent(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        result = await m.send(MSG, recipients=["x@nowhere.test"])
    assert result.rejected["x@nowhere.test"].outcome is Outcome.BOUNCED


async def test_implicit_mx(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        result = await m.send(MSG, recipients=["y@implicit.test"])
    assert result.accepted["y@implicit.test"].host == f"127.0.0.3:{mail_lab.port}"


async def test_one_recipient_refused_others_delivered_across_domains(mail_lab: MailLab) -> None:
    msg = build_message(
        "app@sender.test",
        ["ann@mail.test", "bad@mail.test"],
        cc=["y@implicit.test", "refused@implicit.test"],
        subject="mixed",
        text="hi",
    )
    async with mailer(mail_lab) as m:
        result = await m.send(msg)
    assert set(result.accepted) == {"ann@mail.test", "y@implicit.test"}
    assert set(result.rejected) == {"bad@mail.test", "refused@implicit.test"}
    assert result.rejected["bad@mail.test"].reply.code == 550  # type: ignore[union-attr]
    assert not result.deferred


async def test_bcc_is_stripped_but_delivered(mail_lab: MailLab) -> None:
    msg = (
        b"From: app@sender.test\r\nTo: ann@mail.test\r\nBcc: hidden@mail.test\r\n"
        b"Subject: bcc\r\n\r\nsecret list\r\n"
    )
    async with mailer(mail_lab) as m:
        result = await m.send(msg)
    assert set(result.accepted) == {"ann@mail.test", "hidden@mail.test"}
    [received] = mail_lab.mx1_handler.wait_for_messages(1)
    assert sorted(received.rcpt_tos) == ["ann@mail.test", "hidden@mail.test"]
    assert b"Bcc" not in received.content and b"hidden" not in received.content


async def test_opportunistic_starttls_to_postfix(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        result = await m.send(MSG, recipients=["z@implicit.test"])
    assert result.ok
    assert "tls" in result.timings  # Postfix offered STARTTLS and the session used it


async def test_concurrent_sends_share_sessions(mail_lab: MailLab) -> None:
    async with mailer(mail_lab, max_per_destination=4) as m:
        results = await m.send_many([MSG] * 200, concurrency=50)
        stats = m.pool.stats
    assert all(r.ok for r in results)
    assert len(mail_lab.mx1_handler.wait_for_messages(200)) == 200
    created = stats.total.created
    assert 1 <= created <= 4
    # Sessions that carried messages (one opened while others drained the queue may idle).
    assert 1 <= sum(r.new_sessions for r in results) <= created
    assert sum(r.reused_sessions for r in results) >= 200 - created


async def test_dead_everything_defers(mail_lab: MailLab) -> None:
    mail_lab.mx1.stop()
    async with mailer(mail_lab) as m:
        result = await m.send(MSG, recipients=["bob@firstdown.test", "ann@mail.test"])
    # mx2 (Postfix) is up: both domains fall back to it.
    assert set(result.accepted) == {"bob@firstdown.test", "ann@mail.test"}


def test_sync_mailer_from_threads(mail_lab: MailLab) -> None:
    results = []
    with SyncMailer(nameservers=mail_lab.nameservers, port=mail_lab.port, timeout=10) as m:
        threads = [threading.Thread(target=lambda: results.append(m.send(MSG))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 8 and all(r.ok for r in results)
    assert len(mail_lab.mx1_handler.wait_for_messages(8)) == 8


async def test_relay_mode_with_auth(mail_lab: MailLab, tmp_path: object) -> None:
    # Everything through one smarthost, whatever the recipient's domain.
    relay = f"smtp://{mail_lab.mx1.host}:{mail_lab.port}"
    async with Mailer(relay, timeout=10) as m:
        result = await m.send(MSG, recipients=["someone@elsewhere.test"])
    assert result.ok
    assert mail_lab.mx1_handler.wait_for_messages(1)[0].rcpt_tos == ["someone@elsewhere.test"]
    await asyncio.sleep(0)


async def test_session_dropped_before_body_is_retried_once(mail_lab: MailLab) -> None:
    handler = mail_lab.mx1_handler
    drops = []

    original = handler.handle_MAIL

    async def drop_first(server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        if not drops:
            drops.append(address)
            server.transport.abort()  # a disconnect mid-transaction, before any body
            return "421 4.4.2 dropped (lab)"
        return await original(server, session, envelope, address, options)

    handler.handle_MAIL = drop_first  # type: ignore[method-assign]
    async with mailer(mail_lab) as m:
        result = await m.send(MSG)
    assert drops == ["app@sender.test"]
    assert result.ok, result.recipients
    assert len(handler.wait_for_messages(1)) == 1  # delivered exactly once


async def test_tls_handshakes_counted(mail_lab: MailLab) -> None:
    async with mailer(mail_lab) as m:
        first = await m.send(MSG, recipients=["a@implicit.test"])  # Postfix, STARTTLS
        assert first.new_sessions == 1 and first.tls_full == 1 and first.tls_resumed == 0
        second = await m.send(MSG, recipients=["b@implicit.test"])  # the pooled session
        assert second.reused_sessions == 1 and second.tls_full + second.tls_resumed == 0
