"""Shared fixtures: the loopback lab's real servers (Postfix smtpd, smtp-sink, aiosmtpd).

Every server listens on 127.0.0.0/8 only. A missing server binary fails the run in CI
(CI=true) and skips the test elsewhere (see tests/lab/servers.py: require_binary).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.lab.servers import (
    BinaryMissing,
    PostfixServer,
    SmtpSink,
    TestCA,
    make_test_ca,
    postfix_smtpd,
    smtp_sink,
)

T = TypeVar("T")


def start_lab_server(start: Callable[[], T]) -> T:
    """Start a lab server; a missing binary fails in CI and skips elsewhere."""
    try:
        return start()
    except BinaryMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must provide the lab server: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def lab_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_test_ca(
        tmp_path_factory.mktemp("ca"), extra_names=["mx1.mail.test", "mx2.mail.test"]
    )


@pytest.fixture(scope="session")
def sink() -> Iterator[SmtpSink]:
    server = start_lab_server(smtp_sink)
    with server:
        yield server


@pytest.fixture(scope="session")
def postfix(lab_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostfixServer]:
    """A real Postfix smtpd with STARTTLS (lab CA), PIPELINING and CHUNKING; refuses
    refused@example.test with 550 and defers later@example.test with 450."""
    workdir: Path = tmp_path_factory.mktemp("postfix")
    server = start_lab_server(
        lambda: postfix_smtpd(
            tls_cert=lab_ca.cert_pem,
            tls_key=lab_ca.key_pem,
            workdir=workdir,
            reject_recipients=["refused@example.test"],
            defer_recipients=["later@example.test"],
        )
    )
    with server:
        yield server
