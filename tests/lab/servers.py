"""Real SMTP peers on loopback for tests and benches: Postfix smtp-sink, a private Postfix
smtpd instance, and aiosmtpd with a programmable handler.

Plain helpers (no pytest here). Each starter returns a started handle with `.host`, `.port`,
`.stop()`, `.message_count()` and `.wait_for_messages(n)`; every handle is a context manager.
Only 127.0.0.0/8 addresses are accepted, and nothing in the lab looks a name up.

This module re-exports the lab: lab_common (errors, helpers, LabServer), lab_ca (TestCA),
lab_sink (smtp-sink), lab_postfix (private Postfix) and lab_aiosmtpd (aiosmtpd).
"""

from tests.lab.lab_aiosmtpd import (
    AiosmtpdServer,
    RecordedMessage,
    RecordingHandler,
    aiosmtpd_server,
)
from tests.lab.lab_ca import DEFAULT_CERT_NAMES, TestCA, make_test_ca
from tests.lab.lab_common import (
    BinaryMissing,
    LabError,
    LabServer,
    check_loopback,
    find_binary,
    free_port,
    require_binary,
)
from tests.lab.lab_postfix import PostfixServer, postfix_smtpd
from tests.lab.lab_postfix import _live_group_members as _live_group_members  # used by test_lab.py
from tests.lab.lab_sink import SmtpSink, smtp_sink

__all__ = [
    "DEFAULT_CERT_NAMES",
    "AiosmtpdServer",
    "BinaryMissing",
    "LabError",
    "LabServer",
    "PostfixServer",
    "RecordedMessage",
    "RecordingHandler",
    "SmtpSink",
    "TestCA",
    "aiosmtpd_server",
    "check_loopback",
    "find_binary",
    "free_port",
    "make_test_ca",
    "postfix_smtpd",
    "require_binary",
    "smtp_sink",
]
