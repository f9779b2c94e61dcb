"""The Received trace header the relay prepends, and its once-a-second date."""

from __future__ import annotations

from email.utils import formatdate, parsedate_to_datetime

from mxpress.relay import DateField, received_header
from mxpress.server import Submission


def test_the_date_is_formatted_once_a_second() -> None:
    now = [1_700_000_000.25]
    date = DateField(lambda: now[0])
    first = date.now()
    assert first == formatdate(1_700_000_000, localtime=True)
    now[0] += 0.5  # same second: the same text, not formatted again
    assert date.now() is first
    now[0] += 1.0
    later = date.now()
    assert later == formatdate(1_700_000_001, localtime=True)
    assert parsedate_to_datetime(later).timestamp() == 1_700_000_001


def test_received_header_names_the_peer_helo_protocol_and_date() -> None:
    sub = Submission(
        sender="a@example.test",
        recipients=("b@example.test",),
        data=b"",
        auth_user="alice",
        peer="127.0.0.9",
        tls=True,
        helo="client(evil)\\.test",
    )
    date = formatdate(1_700_000_000, localtime=True)
    expected = (
        "Received: from clientevil.test ([127.0.0.9])\r\n"
        "\tby relay.test (mxpress) with ESMTPSA;\r\n"
        f"\t{date}\r\n"
    )
    assert received_header(sub, "relay.test", date) == expected.encode()
