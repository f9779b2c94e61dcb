"""The mail lab of tests/delivery (dnsmasq zone + aiosmtpd + Postfix on 127.0.0.x),
re-exported for the trace tests; `postfix`, `lab_ca` and `sink` come from tests/conftest.py."""

from tests.delivery.conftest import mail_dns, mail_lab, mail_port, mx2  # noqa: F401
