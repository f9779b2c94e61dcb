"""A mail lab: a real DNS zone (dnsmasq) whose MX hosts are 127.0.0.x addresses with real
SMTP servers behind them, all on one port (the Mailer's delivery port).

    mail.test        MX 10 mx1.mail.test (127.0.0.2: aiosmtpd)
                     MX 20 mx2.mail.test (127.0.0.3: Postfix smtpd, STARTTLS)
    firstdown.test   MX 10 mx1.firstdown.test (127.0.0.4: nothing listens)
                     MX 20 mx2.mail.test
    implicit.test    no MX, A 127.0.0.3 (implicit MX: Postfix)
    nullmx.test      MX 0 . (null MX)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import start_lab_server
from tests.dns.dns_helpers import LOCAL_MODE, Dnsmasq, start_dnsmasq, stop_dnsmasq
from tests.lab.servers import (
    AiosmtpdServer,
    PostfixServer,
    RecordingHandler,
    TestCA,
    aiosmtpd_server,
    free_port,
    postfix_smtpd,
)

MAIL_ZONE = """\
mx-host=mail.test,mx1.mail.test,10
mx-host=mail.test,mx2.mail.test,20
host-record=mx1.mail.test,127.0.0.2
host-record=mx2.mail.test,127.0.0.3
mx-host=firstdown.test,mx1.firstdown.test,10
mx-host=firstdown.test,mx2.mail.test,20
host-record=mx1.firstdown.test,127.0.0.4
host-record=implicit.test,127.0.0.3
mx-host=nullmx.test,.,0
"""


@dataclass
class MailLab:
    dns: Dnsmasq
    port: int
    mx1: AiosmtpdServer
    mx1_handler: RecordingHandler
    mx2: PostfixServer
    ca: TestCA

    @property
    def nameservers(self) -> list[str]:
        return [self.dns.address]


@pytest.fixture(scope="session")
def mail_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = start_dnsmasq(
        tmp_path_factory.mktemp("mail-dns"), LOCAL_MODE, zone=MAIL_ZONE, probe="mx1.mail.test"
    )
    yield server
    stop_dnsmasq(server)


@pytest.fixture(scope="session")
def mail_port() -> int:
    return free_port("127.0.0.2")


@pytest.fixture(scope="session")
def mx2(
    lab_ca: TestCA, mail_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostfixServer]:
    workdir: Path = tmp_path_factory.mktemp("mx2")
    server = start_lab_server(
        lambda: postfix_smtpd(
            "127.0.0.3",
            mail_port,
            tls_cert=lab_ca.cert_pem,
            tls_key=lab_ca.key_pem,
            workdir=workdir,
            hostname="mx2.mail.test",
            reject_recipients=["refused@implicit.test"],
        )
    )
    with server:
        yield server


@pytest.fixture
def mail_lab(
    mail_dns: Dnsmasq, mail_port: int, mx2: PostfixServer, lab_ca: TestCA
) -> Iterator[MailLab]:
    handler = RecordingHandler(rcpt_replies={"bad@mail.test": "550 5.1.1 no such user"})
    with start_lab_server(
        lambda: aiosmtpd_server(handler, "127.0.0.2", mail_port, hostname="mx1.mail.test")
    ) as mx1:
        yield MailLab(mail_dns, mail_port, mx1, handler, mx2, lab_ca)
