"""Metrics: a real relay takes a burst over SMTP and HTTP, delivers it through STARTTLS to a
lab server, and /metrics (scraped over HTTP, parsed with prometheus-client's parser)
counts exactly what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mxpress.delivery.result import Outcome, RecipientResult, SendResult
from mxpress.observe.metrics import OTHER, DomainLabels, RelayMetrics
from mxpress.queue.store import (
    AttemptOutcome,
    MessageState,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
)
from tests.conftest import start_lab_server
from tests.lab.servers import AiosmtpdServer, RecordingHandler, TestCA, aiosmtpd_server
from tests.observe.relay_lab import (
    http_burst,
    label_values,
    scrape,
    smtp_burst,
    start_relay,
    total,
    wait_for,
    write_config,
)

SMTP_MESSAGES = 12
HTTP_MESSAGES = 7
DOMAINS = ["a.test", "b.test", "c.test", "d.test"]


@pytest.fixture
def tls_sink(lab_ca: TestCA) -> Iterator[tuple[AiosmtpdServer, RecordingHandler]]:
    handler = RecordingHandler()
    server = start_lab_server(
        lambda: aiosmtpd_server(handler, tls_context=lab_ca.server_context(), require_starttls=True)
    )
    with server:
        yield server, handler


def rcpts(count: int, offset: int = 0) -> list[str]:
    return [f"user{offset + i}@{DOMAINS[(offset + i) % len(DOMAINS)]}" for i in range(count)]


async def test_metrics_after_a_burst_match_what_was_sent(
    tmp_path: Path, lab_ca: TestCA, tls_sink: tuple[AiosmtpdServer, RecordingHandler]
) -> None:
    server, handler = tls_sink
    config = write_config(
        tmp_path,
        f"smtp+starttls://{server.host}:{server.port}",
        delivery={"cafile": str(lab_ca.ca_pem), "max_per_destination": 4},
        observe={"top_domains": 2},
    )
    relay = await start_relay(config)
    try:
        assert relay.submission is not None
        await asyncio.gather(
            asyncio.to_thread(smtp_burst, relay.submission.port, rcpts(SMTP_MESSAGES)),
            http_burst(relay, rcpts(HTTP_MESSAGES, offset=SMTP_MESSAGES)),
        )
        sent = SMTP_MESSAGES + HTTP_MESSAGES
        await wait_for(lambda: len(handler.messages) >= sent)
        await wait_for(lambda: relay.scheduler.stats.attempts >= sent)

        async def queue_drained() -> bool:
            samples = await scrape(relay)
            return total(samples, "mxpress_queue_messages", state="done") == sent

        for _ in range(200):  # the queue gauges are refreshed in the background
            if await queue_drained():
                break
            await asyncio.sleep(0.05)
        s = await scrape(relay)
    finally:
        await relay.stop(grace=5)

    # Submissions, by channel.
    assert total(s, "mxpress_messages_accepted_total", via="smtp") == SMTP_MESSAGES
    assert total(s, "mxpress_messages_accepted_total", via="http") == HTTP_MESSAGES
    assert total(s, "mxpress_http_messages_accepted_total") == HTTP_MESSAGES
    # Outcomes: every recipient delivered on its first attempt.
    assert total(s, "mxpress_recipients_total", outcome="delivered") == sent
    assert total(s, "mxpress_recipients_total", outcome="deferred") == 0
    assert total(s, "mxpress_recipients_total", outcome="bounced") == 0
    assert total(s, "mxpress_delivery_attempts_total") == sent
    assert total(s, "mxpress_dsn_sent_total") == 0
    # Phase histograms: one observation per attempt for the transaction's phases ...
    for phase in ("queue", "mail", "rcpt", "data", "end_of_data", "total"):
        assert total(s, "mxpress_delivery_phase_seconds_count", phase=phase) == sent, phase
    assert total(s, "mxpress_delivery_phase_seconds_sum", phase="total") > 0
    # The +Inf bucket holds every observation.
    assert total(s, "mxpress_delivery_phase_seconds_bucket", phase="total", le="+Inf") == sent
    # Bounded domain labels: the first two domains seen, then "other".
    domains = label_values(s, "mxpress_delivery_phase_seconds_count", "domain")
    assert OTHER in domains and len(domains) == 3 and domains <= {*DOMAINS, OTHER}
    assert label_values(s, "mxpress_recipients_total", "domain") == domains
    # Sessions: each attempt used one session, new or reused; new ones are the pool's.
    new = total(s, "mxpress_sessions_total", kind="new")
    reused = total(s, "mxpress_sessions_total", kind="reused")
    assert new + reused == sent
    assert 1 <= new <= 4  # max_per_destination
    assert new == total(s, "mxpress_pool_sessions_created_total")
    # A pool checkout may carry several messages (a drainer streams what is queued), so
    # the pool hands out idle sessions less often than messages ride on open ones.
    assert reused > 0 and total(s, "mxpress_pool_sessions_reused_total") <= reused
    # ... and one per new session for the session's setup phases.
    for phase in ("connect", "banner", "ehlo", "starttls", "tls", "ehlo2"):
        assert total(s, "mxpress_delivery_phase_seconds_count", phase=phase) == new, phase
    # TLS: every new session did STARTTLS; the first per destination in full.
    full = total(s, "mxpress_tls_handshakes_total", kind="full")
    resumed = total(s, "mxpress_tls_handshakes_total", kind="resumed")
    assert full + resumed == new and full >= 1
    # Queue depth, by state, from the background count.
    assert total(s, "mxpress_queue_messages", state="done") == sent
    assert total(s, "mxpress_queue_messages", state="active") == 0
    assert total(s, "mxpress_queue_recipients", state="delivered") == sent
    assert total(s, "mxpress_queue_recipients", state="pending") == 0
    assert 0 <= total(s, "mxpress_queue_counts_age_seconds") < 5
    # Live state of the other parts.
    assert total(s, "mxpress_smtp_connections_total") >= 1
    assert total(s, "mxpress_smtp_connections_passed_on_total") == 0  # one process
    assert total(s, "mxpress_deliveries_in_flight") == 0
    assert total(s, "mxpress_pool_waiting") == 0
    assert total(s, "mxpress_delivery_log_records_total") == sent
    assert total(s, "mxpress_delivery_log_dropped_total") == 0
    # Relay mode: no resolver, so no DNS metrics.
    assert not [name for name, _, _ in s if name.startswith("mxpress_dns_")]
    # Never the process-global registry.
    assert b"mxpress_" not in generate_latest(REGISTRY)


async def test_two_relays_have_their_own_registries(tmp_path: Path) -> None:
    from mxpress.config import load_settings
    from mxpress.relay import build_relay

    relays = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        config = write_config(tmp_path / name, "smtp+plain://127.0.0.1:2")
        relays.append(build_relay(load_settings(config, environ={})))
    one, two = relays
    assert one.registry is not two.registry
    assert one.metrics is not None and two.metrics is not None
    one.metrics.on_accepted("smtp")
    assert b'via="smtp"} 1.0' in generate_latest(one.registry)
    assert b'via="smtp"} 0.0' in generate_latest(two.registry)


def test_domain_labels_are_bounded() -> None:
    labels = DomainLabels(2)
    assert labels("a.test") == "a.test"
    assert labels("b.test") == "b.test"
    assert labels("c.test") == OTHER
    assert labels("a.test") == "a.test"  # known ones keep their label
    assert DomainLabels(5)("not a domain\n") == OTHER
    assert DomainLabels(5)("") == OTHER
    assert DomainLabels(0)("a.test") == OTHER


def attempt(recipients: list[str], states: list[RecipientState]) -> tuple[object, ...]:
    message = QueuedMessage(
        "q1",
        "s@x.test",
        MessageState.ACTIVE,
        0.0,
        10,
        False,
        "test",
        tuple(RecipientStatus(r, RecipientState.PENDING) for r in recipients),
        b"",
    )
    result = SendResult(
        "s@x.test",
        {r: RecipientResult(r, Outcome.DELIVERED) for r in recipients},
        timings={"dns": 0.0002, "connect": 0.003, "total": 0.01},
        new_sessions=1,
        tls_resumed=1,
    )
    outcomes = [AttemptOutcome(r, s) for r, s in zip(recipients, states, strict=True)]
    return message, result, outcomes


def test_on_attempt_counts_outcomes_phases_sessions() -> None:
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry, top_domains=1)
    message, result, outcomes = attempt(
        ["a@one.test", "b@two.test"], [RecipientState.DELIVERED, RecipientState.DEFERRED]
    )
    metrics.on_attempt(message, result, outcomes)  # type: ignore[arg-type]
    metrics.on_accepted("carrier-pigeon")  # an unknown channel is "other", not a new label
    samples = [
        (s.name, s.labels, s.value)
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    ]
    assert total(samples, "mxpress_recipients_total", outcome="delivered", domain="one.test") == 1
    assert total(samples, "mxpress_recipients_total", outcome="deferred", domain=OTHER) == 1
    for phase in ("dns", "connect", "total"):
        assert total(samples, "mxpress_delivery_phase_seconds_count", phase=phase) == 1
    # 0.2 ms lands in the 0.25 ms bucket, not the 0.1 ms one.
    dns = {"phase": "dns", "domain": "one.test"}
    assert total(samples, "mxpress_delivery_phase_seconds_bucket", le="0.0001", **dns) == 0
    assert total(samples, "mxpress_delivery_phase_seconds_bucket", le="0.00025", **dns) == 1
    assert total(samples, "mxpress_tls_handshakes_total", kind="resumed") == 1
    assert total(samples, "mxpress_tls_handshakes_total", kind="full") == 0
    assert total(samples, "mxpress_sessions_total", kind="new") == 1
    assert total(samples, "mxpress_messages_accepted_total", via="other") == 1
    assert total(samples, "mxpress_messages_accepted_total", via="smtp") == 0  # present, zero
