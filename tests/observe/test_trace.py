"""`mxpress trace`: the waterfall math on a fake clock, then real traces on the loopback
lab (dnsmasq zone, aiosmtpd and Postfix with STARTTLS on 127.0.0.x)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from click.testing import CliRunner

from mxpress.cli.trace import trace_command
from mxpress.client.session import TLSMode
from mxpress.errors import ConfigError
from mxpress.observe import Phase, Trace, TraceBuilder, compare, flight_spans, to_json, verdict
from mxpress.observe.trace import bar, setup_ms
from mxpress.observe.tracer import TraceRequest, run_trace
from tests.conftest import start_lab_server
from tests.delivery.conftest import MailLab
from tests.lab.servers import (
    AiosmtpdServer,
    PostfixServer,
    RecordingHandler,
    TestCA,
    aiosmtpd_server,
)

# -- pure: builder, verdict, flights, bars, comparison --------------------------------


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> float:
        self.now += ms / 1e3
        return self.now


def assert_tiles(trace: Trace) -> None:
    """Phases start where the previous one ended and add up to the total."""
    at = 0.0
    for phase in trace.phases:
        assert phase.start_ms == pytest.approx(at, abs=1e-6), phase
        at = phase.end_ms
    assert sum(p.duration_ms for p in trace.phases) == pytest.approx(trace.total_ms, abs=1e-6)


def test_builder_places_phases_on_one_clock() -> None:
    clock = FakeClock()
    t0 = clock()
    b = TraceBuilder("a@b.test", "probe", t0, run=2)
    t1 = clock.advance(3)
    b.add("dns_mx", t0, t1, "cache miss", cache="miss")
    t2 = clock.advance(1)
    b.add("connect", t1, t2, "refused", host="mx1 127.0.0.4", ok=False)
    end = b.add_sequence(t2, [("connect", 0.002, ""), ("banner", 0.004, "220")])
    assert end == pytest.approx(t2 + 0.006)
    clock.now = end
    trace = b.finish(clock.advance(0))
    assert trace.run == 2 and trace.target == "a@b.test"
    assert [(p.name, round(p.start_ms, 6), round(p.duration_ms, 6)) for p in trace.phases] == [
        ("dns_mx", 0.0, 3.0),
        ("connect", 3.0, 1.0),
        ("connect", 4.0, 2.0),
        ("banner", 6.0, 4.0),
    ]
    assert trace.total_ms == pytest.approx(10.0)
    assert_tiles(trace)
    assert trace.phase("connect") is trace.phases[2]  # the last one: the one that worked


def _trace(*phases: tuple[str, float], **kw: Any) -> Trace:
    b = TraceBuilder(kw.pop("target", "x@y.test"), "probe", 0.0, run=kw.pop("run", 1))
    at = 0.0
    for name, ms in phases:
        b.add(name, at, at + ms / 1e3, cache=kw.get(f"cache_{name}"))
        at += ms / 1e3
    trace = b.finish(at)
    for key in ("tls", "session", "attempts"):
        if key in kw:
            setattr(trace, key, kw[key])
    return trace


def test_verdict_names_the_dominant_phase_and_its_share() -> None:
    trace = _trace(("dns_mx", 0.5), ("connect", 1.0), ("tls", 7.2), ("ehlo", 1.3))
    assert verdict(trace) == "72% of the time was the TLS handshake (7.2 of 10.0 ms)"


def test_verdict_adds_up_phases_of_one_name() -> None:
    b = TraceBuilder("x", "probe", 0.0)
    b.add("connect", 0.0, 0.003, ok=False)
    b.add("connect", 0.003, 0.006)
    b.add("tls", 0.006, 0.010)
    text = verdict(b.finish(0.010))
    assert text.startswith("60% of the time was the TCP connects (including failed ones)")


def test_verdict_of_nothing() -> None:
    assert verdict(Trace("x", "probe")) == "nothing took measurable time"


def test_flight_spans_pipelined_data_is_two_flights() -> None:
    t = {"mail": 0.001, "rcpt": 0.0002, "data": 0.0001, "end_of_data": 0.004, "total": 0.0054}
    spans = flight_spans(t, 0.0056, pipelined=True, body_sent=True)
    assert [n for n, _ in spans] == ["mail_rcpt_data", "data_transfer"]
    assert spans[0][1] == pytest.approx(0.0013)
    assert sum(s for _, s in spans) == pytest.approx(0.0056)  # fills the wall time


def test_flight_spans_bdat_is_one_flight() -> None:
    t = {"mail": 0.001, "rcpt": 0.0001, "end_of_data": 0.002, "total": 0.002}
    assert flight_spans(t, 0.0021, pipelined=True, body_sent=True) == [("mail_rcpt_bdat", 0.0021)]


def test_flight_spans_lockstep_is_one_phase_per_round_trip() -> None:
    t = {"mail": 0.001, "rcpt": 0.001, "data": 0.001, "end_of_data": 0.002, "total": 0.005}
    spans = flight_spans(t, 0.0051, pipelined=False, body_sent=True)
    assert [n for n, _ in spans] == ["mail", "rcpt", "data", "data_transfer"]
    assert spans[-1][1] == pytest.approx(0.0021)
    # Nobody accepted: no body; the rest of the wall time stays with the last command.
    t = {"mail": 0.001, "rcpt": 0.001, "end_of_data": 0.002, "total": 0.002}
    spans = flight_spans(t, 0.0025, pipelined=False, body_sent=False)
    assert spans == [("mail", 0.001), ("rcpt", pytest.approx(0.0015))]


def test_flight_spans_without_a_transaction() -> None:
    assert flight_spans({}, 0.003, pipelined=True, body_sent=False) == [("mail", 0.003)]


def test_bar_is_proportional_and_never_invisible() -> None:
    total = 100.0
    assert bar(Phase("a", 0.0, 50.0), total, 40) == (0, 20)
    assert bar(Phase("b", 50.0, 50.0), total, 40) == (20, 20)
    assert bar(Phase("c", 99.9, 0.01), total, 40) == (39, 1)  # tiny: still one cell
    assert bar(Phase("d", 0.0, 0.0), 0.0, 40) == (0, 0)


def test_compare_names_what_was_saved() -> None:
    first = _trace(
        ("dns_mx", 3),
        ("connect", 1),
        ("tls", 5),
        ("mail_rcpt", 1),
        cache_dns_mx="miss",
        tls={"resumed": False},
        session="new",
    )
    second = _trace(
        ("dns_mx", 0.02),
        ("connect", 1),
        ("tls", 1.5),
        ("mail_rcpt", 1),
        run=2,
        cache_dns_mx="hit",
        tls={"resumed": True},
        session="new",
    )
    text = compare(first, second)
    assert text.startswith("run 2 was 65% faster than run 1 (3.5 ms vs 10.0 ms)")
    assert text.endswith(": DNS from cache, TLS resumed")
    assert setup_ms(second) == pytest.approx(2.5)
    reused = _trace(("dns_mx", 0.02), ("pool", 0.01), ("mail_rcpt", 1), run=3, session="reused")
    assert "session reused (no connect, TLS or EHLO)" in compare(first, reused)
    slower = _trace(("dns_mx", 3), ("connect", 9), run=2)
    assert "20% slower" in compare(first, slower)


JSON_KEYS = {
    "run",
    "target",
    "mode",
    "total_ms",
    "phases",
    "mx",
    "chosen",
    "attempts",
    "tls",
    "capabilities",
    "session",
    "recipients",
    "outcome",
    "error",
    "verdict",
}
PHASE_KEYS = {"name", "title", "start_ms", "duration_ms", "detail", "host", "ok", "cache"}


def test_to_json_keys() -> None:
    data = to_json(_trace(("dns_mx", 1), ("tls", 2)))
    assert set(data) == JSON_KEYS
    assert set(data["phases"][0]) == PHASE_KEYS
    assert data["phases"][1] == {
        "name": "tls",
        "title": "TLS handshake",
        "start_ms": 1.0,
        "duration_ms": 2.0,
        "detail": "",
        "host": "",
        "ok": True,
        "cache": None,
    }
    json.dumps(data)  # JSON-ready as it is


@pytest.mark.parametrize(
    ("request_kw", "message"),
    [
        ({}, "give a recipient"),
        ({"recipients": ["a@x.test", "b@y.test"]}, "share one domain"),
        ({"recipients": ["a@x.test"], "send": True}, "needs a sender"),
        ({"recipients": ["a@x.test"], "repeat": 0}, "repeat"),
        ({"recipients": ["a@x.test"], "username": "u"}, "go together"),
    ],
)
def test_request_that_cannot_run(request_kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TraceRequest(**request_kw).check()


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(trace_command, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_usage_errors_are_one_line() -> None:
    code, _, err = cli()
    assert code == 1 and err.startswith("mxpress trace: give a recipient")
    code, _, err = cli("--server", "nope:port")
    assert code == 1 and "--server must be HOST:PORT" in err
    code, _, err = cli("a@x.test", "--send")
    assert code == 1 and "needs a sender" in err
    code, _, err = cli("a@x.test", "--send", "--from", "not an address")  # before any DNS
    assert code == 1 and err.startswith("mxpress trace: ") and err.count("\n") == 1


# -- the lab ------------------------------------------------------------------------------

SETUP_STARTTLS = ["pool", "connect", "banner", "ehlo", "starttls", "tls", "ehlo2"]


def names(trace: Trace) -> list[str]:
    return [p.name for p in trace.phases]


def lab_request(lab: MailLab, recipients: Sequence[str], **kw: Any) -> TraceRequest:
    return TraceRequest(
        recipients=list(recipients),
        nameservers=lab.nameservers,
        port=lab.port,
        cafile=str(lab.ca.ca_pem),
        timeout=10,
        **kw,
    )


# A message would be in the server's log by then (Postfix logs a queued one at once).
SETTLE = 0.3


def assert_nothing_delivered(server: PostfixServer, before: int) -> None:
    time.sleep(SETTLE)
    assert server.message_count() == before


async def test_probe_to_postfix_every_phase_and_nothing_delivered(mail_lab: MailLab) -> None:
    before = mail_lab.mx2.message_count()
    [trace] = await run_trace(lab_request(mail_lab, ["y@implicit.test"]))
    assert trace.outcome == "accepted", trace.error
    # tls_context: the first TLS session of the run builds the SSL context.
    assert names(trace) == [
        "dns_mx",
        "dns_addr",
        "pool",
        "connect",
        "banner",
        "ehlo",
        "starttls",
        "tls_context",
        "tls",
        "ehlo2",
        "mail_rcpt",
        "quit",
    ]
    assert all(p.ok for p in trace.phases)
    assert_tiles(trace)
    total = sum(p.duration_ms for p in trace.phases)
    assert abs(total - trace.total_ms) <= max(0.05 * trace.total_ms, 2.0)
    dns = trace.phase("dns_mx")
    assert dns is not None and dns.cache == "miss" and "implicit MX" in dns.detail
    assert trace.mx == [{"host": "implicit.test", "preference": 0, "addresses": ["127.0.0.3"]}]
    assert trace.chosen == {
        "host": "implicit.test",
        "address": "127.0.0.3",
        "port": mail_lab.port,
        "why": "no MX records: the domain's own address (implicit MX, RFC 5321 §5.1); "
        "first address of 1",
    }
    assert trace.session == "new"
    assert trace.tls is not None and trace.tls["version"] == "TLSv1.3"
    assert trace.tls["resumed"] is False and trace.tls["verified"] is False
    assert "PIPELINING" in trace.capabilities and "CHUNKING" in trace.capabilities
    assert trace.recipients["y@implicit.test"].startswith("250")  # type: ignore[union-attr]
    assert "nothing delivered" in trace.phases[-2].detail
    assert "% of the time was" in verdict(trace)
    await asyncio.sleep(SETTLE)
    assert mail_lab.mx2.message_count() == before


async def test_second_run_uses_dns_cache_and_resumes_tls(mail_lab: MailLab) -> None:
    first, second = await run_trace(lab_request(mail_lab, ["y@implicit.test"], repeat=2))
    assert first.outcome == second.outcome == "accepted"
    assert [p.cache for p in first.phases if p.cache] == ["miss", "miss"]
    assert [p.cache for p in second.phases if p.cache] == ["hit", "hit"]
    dns_ms = sum(p.duration_ms for p in second.phases if p.name.startswith("dns"))
    assert dns_ms < 5.0
    assert "cache hit" in second.phases[0].detail
    # A new connection (no --reuse) that resumes the TLS session of run 1.
    assert second.session == "new"
    assert second.tls is not None and second.tls["resumed"] is True
    assert first.tls is not None and first.tls["resumed"] is False
    assert names(second) == ["dns_mx", "dns_addr", *SETUP_STARTTLS, "mail_rcpt", "quit"]
    tls = second.phase("tls")
    assert tls is not None and "resumed" in tls.detail
    assert_tiles(second)
    assert "DNS from cache" in compare(first, second)
    assert "TLS resumed" in compare(first, second)


async def test_reuse_keeps_the_pooled_session(mail_lab: MailLab) -> None:
    first, second = await run_trace(
        lab_request(mail_lab, ["y@implicit.test"], repeat=2, reuse=True)
    )
    assert first.session == "new" and second.session == "reused"
    assert "quit" not in names(first)  # kept open for run 2
    assert names(second) == ["dns_mx", "dns_addr", "pool", "mail_rcpt", "quit"]
    assert second.outcome == "accepted"
    assert "session reused" in compare(first, second)


async def test_send_delivers_exactly_one(mail_lab: MailLab) -> None:
    before = mail_lab.mx2.message_count()
    [trace] = await run_trace(
        lab_request(mail_lab, ["y@implicit.test"], send=True, sender="app@sender.test")
    )
    assert trace.outcome == "delivered", trace.error
    assert trace.mode == "send"
    # Postfix offers PIPELINING + CHUNKING: MAIL, RCPT and BDAT LAST with the body in one flight.
    assert names(trace)[-2:] == ["mail_rcpt_bdat", "quit"]
    assert_tiles(trace)
    assert mail_lab.mx2.wait_for_messages(before + 1) == before + 1
    await asyncio.sleep(SETTLE)
    assert mail_lab.mx2.message_count() == before + 1


async def test_dead_first_mx_falls_back_to_the_next(mail_lab: MailLab) -> None:
    [trace] = await run_trace(lab_request(mail_lab, ["bob@firstdown.test"], tls=TLSMode.REQUIRED))
    assert trace.outcome == "accepted", trace.error
    failed = [p for p in trace.phases if not p.ok]
    assert len(failed) == 1
    assert failed[0].name == "connect" and failed[0].host == "mx1.firstdown.test 127.0.0.4"
    assert failed[0].detail.endswith("→ next")
    assert trace.attempts[0]["host"] == "mx1.firstdown.test"
    assert trace.attempts[0]["phase"] == "connect"
    assert trace.chosen is not None and trace.chosen["host"] == "mx2.mail.test"
    assert trace.chosen["why"].startswith("after mx1.firstdown.test 127.0.0.4 failed")
    assert "preference 20 of 2 hosts" in trace.chosen["why"]
    # --starttls checks the certificate (issued by the lab CA for mx2.mail.test).
    assert trace.tls is not None and trace.tls["verified"] is True
    assert_tiles(trace)


async def test_refused_recipient_shows_its_550(mail_lab: MailLab) -> None:
    [trace] = await run_trace(lab_request(mail_lab, ["refused@implicit.test"]))
    assert trace.outcome == "refused"
    reply = trace.recipients["refused@implicit.test"]
    assert reply is not None and reply.startswith("550")


async def test_aiosmtpd_without_starttls_or_pipelining(mail_lab: MailLab) -> None:
    [trace] = await run_trace(lab_request(mail_lab, ["ann@mail.test", "bad@mail.test"]))
    assert trace.outcome == "partial"
    assert trace.tls is None
    plain = ["pool", "connect", "banner", "ehlo"]  # no STARTTLS offered
    assert names(trace) == ["dns_mx", "dns_addr", *plain, "mail_rcpt", "quit"]
    assert "no PIPELINING" in trace.phases[-2].detail
    assert trace.chosen is not None
    assert trace.chosen["why"] == "lowest preference 10 of 2 hosts; first address of 1"
    assert trace.recipients["bad@mail.test"] == "550 5.1.1 no such user"


@pytest.mark.parametrize(
    ("rcpt", "error"),
    [("x@nullmx.test", "null MX"), ("x@nowhere.test", "NXDOMAIN")],
)
async def test_dns_failures_are_recorded(mail_lab: MailLab, rcpt: str, error: str) -> None:
    [trace] = await run_trace(lab_request(mail_lab, [rcpt]))
    assert trace.outcome == "failed"
    assert trace.error is not None and error in trace.error
    assert names(trace) == ["dns_mx"] and not trace.phases[0].ok
    assert trace.session is None


# -- the CLI on the lab -----------------------------------------------------------------


def lab_args(lab: MailLab) -> list[str]:
    return ["--nameserver", lab.dns.address, "--port", str(lab.port), "--timeout", "10"]


def test_cli_waterfall_and_comparison(mail_lab: MailLab) -> None:
    code, out, err = cli(*lab_args(mail_lab), "y@implicit.test", "--repeat", "2")
    assert code == 0, err
    # rich wraps long lines at the terminal width, and where depends on how many digits
    # the timings have (a loaded machine): compare with the line breaks taken out.
    flat = " ".join(out.split())
    assert "run 1" in flat and "run 2" in flat
    assert "TLS handshake" in flat and "█" in flat
    assert "resumed" in flat and "verdict:" in flat and "% of the time was" in flat
    assert "capabilities: PIPELINING" in flat
    assert "run 2 was" in flat and "DNS from cache, TLS resumed" in flat
    assert "see --reuse" in flat


def test_cli_json_is_a_list_of_runs(mail_lab: MailLab) -> None:
    code, out, err = cli(*lab_args(mail_lab), "y@implicit.test", "--repeat", "2", "--json")
    assert code == 0, err
    runs = json.loads(out)
    assert [r["run"] for r in runs] == [1, 2]
    for run in runs:
        assert set(run) == JSON_KEYS
        assert all(set(p) == PHASE_KEYS for p in run["phases"])
    assert runs[1]["tls"]["resumed"] is True
    assert runs[1]["phases"][0]["cache"] == "hit"


def test_cli_server_mode(postfix: PostfixServer, lab_ca: TestCA) -> None:
    code, out, err = cli(
        "--server",
        f"127.0.0.1:{postfix.port}",
        "--starttls",
        "--cafile",
        str(lab_ca.ca_pem),
        "--json",
    )
    assert code == 0, err
    [run] = json.loads(out)
    assert run["mode"] == "connect" and run["outcome"] == "connected"
    assert run["mx"] == [] and not any(p["name"].startswith("dns") for p in run["phases"])
    assert [p["name"] for p in run["phases"]][-3:] == ["tls", "ehlo2", "quit"]
    assert run["tls"]["verified"] is True
    assert run["chosen"]["why"].startswith("given with --server")


def test_cli_server_mode_refused_recipient(postfix: PostfixServer, lab_ca: TestCA) -> None:
    before = postfix.message_count()
    code, out, _ = cli(
        "--server",
        f"127.0.0.1:{postfix.port}",
        "--cafile",
        str(lab_ca.ca_pem),
        "refused@example.test",
        "ok@example.test",
    )
    assert code == 2  # a recipient was refused
    assert "refused@example.test" in out and "550" in out
    assert "outcome: partial" in out
    assert_nothing_delivered(postfix, before)


def test_cli_failure_exits_1_with_the_reason(mail_lab: MailLab) -> None:
    code, out, err = cli(*lab_args(mail_lab), "x@nowhere.test")
    assert code == 1
    assert "NXDOMAIN" in out
    assert err.strip() == "mxpress trace: domain nowhere.test does not exist (NXDOMAIN)"


# -- AUTH, and a server without PIPELINING (aiosmtpd) ---------------------------------


@pytest.fixture
def auth_handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def auth_server(auth_handler: RecordingHandler, lab_ca: TestCA) -> Iterator[AiosmtpdServer]:
    with start_lab_server(
        lambda: aiosmtpd_server(
            auth_handler, tls_context=lab_ca.server_context(), auth={"app": "s3cret"}
        )
    ) as server:
        yield server


async def test_server_mode_with_auth_and_lockstep_send(
    auth_server: AiosmtpdServer, auth_handler: RecordingHandler, lab_ca: TestCA
) -> None:
    request = TraceRequest(
        recipients=["ann@example.test"],
        server=(auth_server.host, auth_server.port),
        tls=TLSMode.REQUIRED,
        cafile=str(lab_ca.ca_pem),
        username="app",
        password="s3cret",
        sender="app@sender.test",
        send=True,
        timeout=10,
    )
    [trace] = await run_trace(request)
    assert trace.outcome == "delivered", trace.error
    assert not any(n.startswith("dns") for n in names(trace))
    assert names(trace)[-8:] == [
        "tls",
        "ehlo2",
        "auth",
        "mail",  # aiosmtpd offers no PIPELINING: one round trip per command
        "rcpt",
        "data",
        "data_transfer",
        "quit",
    ]
    auth = trace.phase("auth")
    assert auth is not None and auth.detail == "as app"
    assert trace.tls is not None and trace.tls["verified"] is True
    assert_tiles(trace)
    assert auth_handler.wait_for_messages(1)[0].rcpt_tos == ["ann@example.test"]


async def test_wrong_password_is_a_failed_auth_phase(
    auth_server: AiosmtpdServer, lab_ca: TestCA
) -> None:
    request = TraceRequest(
        server=(auth_server.host, auth_server.port),
        tls=TLSMode.REQUIRED,
        cafile=str(lab_ca.ca_pem),
        username="app",
        password="wrong",
        timeout=10,
    )
    [trace] = await run_trace(request)
    assert trace.outcome == "failed" and trace.session is None
    [failed] = trace.phases
    assert failed.name == "auth" and not failed.ok
    assert "includes the setup before it" in failed.detail
    assert trace.error is not None and "authentication" in trace.error
