"""The sans-IO SMTP server state machine (protocol/server.py), fed bytes with no network:
whole, byte by byte and in arbitrary pieces."""

from __future__ import annotations

import base64
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxpress.protocol.server import ServerMachine
from mxpress.protocol.server_checks import RejectReason
from mxpress.protocol.server_data import DataReader
from mxpress.protocol.server_events import (
    AuthRequest,
    DataComplete,
    Event,
    MailFrom,
    Quit,
    RcptTo,
    Rejected,
    ServerConfig,
    StartTLS,
)

CONFIG = ServerConfig(
    hostname="mx.test", max_message_size=4096, max_header_size=1024, max_recipients=3
)
TLS_CONFIG = ServerConfig(
    hostname="mx.test",
    max_message_size=4096,
    max_header_size=1024,
    max_recipients=3,
    starttls=True,
    auth_mechanisms=("LOGIN", "PLAIN"),
)
MESSAGE = b"From: a@x.test\r\nSubject: hi\r\n\r\nHello.\r\n"
SESSION = (
    b"EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    + MESSAGE
    + b"..dot\r\n.\r\nQUIT\r\n"
)


class Peer:
    """Drives a machine like a driver would: answers every event (yes by default)."""

    def __init__(self, config: ServerConfig = CONFIG, *, tls: bool = False) -> None:
        self.machine = ServerMachine(config, tls=tls)
        self.events: list[Event] = []
        self.writes: list[bytes] = [self.machine.take_output()]
        self.refuse_mail: str | None = None

    def feed(self, data: bytes) -> bytes:
        """One read: handle it, answer the events, return the one write it produced."""
        machine = self.machine
        machine.receive(data)
        self.drain()
        out = machine.take_output()
        if out:
            self.writes.append(out)
        return out

    def drain(self) -> None:
        machine = self.machine
        while (event := machine.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, MailFrom) and self.refuse_mail:
                machine.refuse(self.refuse_mail)
            elif isinstance(event, MailFrom | RcptTo):
                machine.accept()
            elif isinstance(event, DataComplete):
                machine.accept(f"250 2.0.0 Ok: queued as Q{len(self.events)}")
            elif isinstance(event, AuthRequest):
                machine.accept_auth(event.login.decode())

    def replies(self) -> list[str]:
        """Every reply line sent so far."""
        return b"".join(self.writes).decode().splitlines()

    def codes(self) -> list[int]:
        return [int(line[:3]) for line in self.replies() if line[3:4] == " "]


def run(data: bytes, cuts: Iterable[int] = (), **options: object) -> Peer:
    peer = Peer(**options)  # type: ignore[arg-type]
    start = 0
    for cut in sorted(set(cuts)):
        peer.feed(data[start:cut])
        start = cut
    peer.feed(data[start:])
    return peer


def data_of(peer: Peer) -> list[bytes]:
    return [e.data for e in peer.events if isinstance(e, DataComplete)]


# --- a whole session ----------------------------------------------------------------------


def test_pipelined_session_in_one_read_gets_one_write() -> None:
    peer = Peer()
    assert peer.writes == [b"220 mx.test ESMTP mxpress\r\n"]
    out = peer.feed(SESSION)
    assert peer.codes() == [220, 250, 250, 250, 354, 250, 221]
    assert out.count(b"\r\n") == len(peer.replies()) - 1  # every reply in that one write
    assert [type(e) for e in peer.events] == [MailFrom, RcptTo, DataComplete, Quit]
    mail, rcpt, done, _ = peer.events
    assert mail == MailFrom("a@x.test", None, None, False)
    assert rcpt == RcptTo("b@y.test")
    assert isinstance(done, DataComplete)
    assert (done.sender, done.recipients, done.data) == (
        "a@x.test",
        ("b@y.test",),
        MESSAGE + b".dot\r\n",
    )
    assert peer.machine.closed and peer.machine.helo == "client.test"


def test_ehlo_advertises_the_extensions() -> None:
    peer = run(b"EHLO c\r\n")
    assert peer.replies()[1:] == [
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 4096",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250 ENHANCEDSTATUSCODES",
    ]
    tls = run(b"EHLO c\r\n", config=TLS_CONFIG)
    assert tls.replies()[-1] == "250 STARTTLS" and not any("AUTH" in r for r in tls.replies())
    implicit = run(b"EHLO c\r\n", config=TLS_CONFIG, tls=True)
    assert "STARTTLS" not in "".join(implicit.replies())
    assert implicit.replies()[-1] == "250 AUTH LOGIN PLAIN"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(SESSION) - 1), max_size=12))
def test_any_split_gives_the_same_replies_and_events(cuts: list[int]) -> None:
    whole = run(SESSION)
    split = run(SESSION, cuts)
    assert split.replies() == whole.replies()
    assert split.events == whole.events


def test_byte_by_byte() -> None:
    peer = run(SESSION, range(1, len(SESSION)))
    assert peer.replies() == run(SESSION).replies()
    assert data_of(peer) == [MESSAGE + b".dot\r\n"]


def test_commands_after_the_data_wait_for_its_answer() -> None:
    machine = ServerMachine(CONFIG)
    machine.receive(b"HELO c\r\nMAIL FROM:<a@x.test>\r\n")
    assert isinstance(machine.next_event(), MailFrom)
    assert machine.next_event() is None  # waiting for the answer
    machine.accept()
    machine.receive(b"RCPT TO:<b@y.test>\r\nDATA\r\n" + MESSAGE + b".\r\nNOOP\r\nRSET\r\n")
    assert isinstance(machine.next_event(), RcptTo)
    machine.accept()
    event = machine.next_event()
    assert isinstance(event, DataComplete) and not machine.in_transaction
    assert machine.next_event() is None and machine.waiting  # NOOP waits for the fsync
    assert machine.take_output().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    machine.accept("250 2.0.0 Ok: queued as X")
    assert machine.next_event() is None
    assert machine.take_output() == b"250 2.0.0 Ok: queued as X\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"


# --- MAIL and RCPT ------------------------------------------------------------------------


def test_null_sender_is_accepted() -> None:
    peer = run(b"EHLO c\r\nMAIL FROM:<>\r\n")
    assert peer.events == [MailFrom("", None, None, False)]
    assert peer.replies()[-1] == "250 2.1.0 Ok"
    assert run(b"EHLO c\r\nMAIL FROM:\r\n").codes()[-1] == 553  # empty, without <>: no


@pytest.mark.parametrize(
    ("params", "event_or_code"),
    [
        (" SIZE=100", MailFrom("a@x.test", 100, None, False)),
        (" size=100 body=8bitmime smtputf8", MailFrom("a@x.test", 100, "8BITMIME", True)),
        (" BODY=7BIT", MailFrom("a@x.test", None, "7BIT", False)),
        (" SIZE=4097", 552),
        (" SIZE=12x", 501),
        (" SIZE=\uff11\uff12", 501),  # non-ASCII digits
        (" SIZE=1 SIZE=2", 501),
        (" BODY=BINARYMIME", 501),
        (" SMTPUTF8=yes", 501),
        (" FOO=BAR", 555),
        (" RET=FULL", 555),  # DSN is not offered
        (" AUTH=<>", 555),  # AUTH is not offered here
    ],
)
def test_mail_parameters(params: str, event_or_code: MailFrom | int) -> None:
    peer = run(f"EHLO c\r\nMAIL FROM:<a@x.test>{params}\r\n".encode())
    if isinstance(event_or_code, MailFrom):
        assert peer.events == [event_or_code]
    else:
        assert peer.codes()[-1] == event_or_code and not peer.machine.in_transaction


def test_mail_auth_parameter_is_taken_when_auth_is_offered() -> None:
    peer = run(b"EHLO c\r\nMAIL FROM:<a@x.test> AUTH=<>\r\n", config=TLS_CONFIG, tls=True)
    assert peer.codes()[-1] == 250


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("MAIL FROM:<a b@x.test>", 553),
        ("MAIL FROM:<a@x.test", 553),
        ("MAIL FROM:<a@x.test>x", 553),
        ("MAIL FROM:<jörg@x.test>", 553),
        ("MAIL TO:<a@x.test>", 501),
        ("MAIL", 501),
    ],
)
def test_bad_senders(command: str, code: int) -> None:
    peer = run(f"EHLO c\r\n{command}\r\n".encode())
    assert peer.codes()[-1] == code
    if code == 553:
        assert peer.events == [Rejected(RejectReason.BAD_ADDRESS)]


def test_addresses_are_kept_as_sent() -> None:
    peer = run(
        'EHLO c\r\nMAIL FROM:<Jörg@X.test> SMTPUTF8\r\nRCPT TO:<@relay.test:"a b"@Y.test>\r\n'
        "RCPT TO: b@y.test\r\n".encode()
    )
    assert peer.events == [
        MailFrom("Jörg@X.test", None, None, True),
        RcptTo('"a b"@Y.test'),
        RcptTo("b@y.test"),
    ]


def test_recipients_checked_counted_and_deduplicated() -> None:
    peer = run(
        b"EHLO c\r\nRCPT TO:<b@y.test>\r\nMAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\n"
        b"RCPT TO:<b@y.test>\r\nRCPT TO:<B@y.test>\r\nRCPT TO:<b@y.test>\r\n"
        b"RCPT TO:<postmaster>\r\nRCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\n"
        b"RCPT TO:<e@y.test> NOTIFY=NEVER\r\nRCPT TO:<e@y.test\r\n"
    )
    assert peer.codes()[1:] == [250, 503, 250, 503, 250, 250, 250, 553, 250, 452, 555, 553]
    assert [e.recipient for e in peer.events if isinstance(e, RcptTo)] == [
        "b@y.test",
        "B@y.test",
        "c@y.test",
    ]
    assert "250 2.1.5 Ok (duplicate)" in peer.replies()
    assert Rejected(RejectReason.TOO_MANY_RECIPIENTS) in peer.events


def test_a_refused_mail_leaves_no_transaction() -> None:
    peer = Peer()
    peer.refuse_mail = "530 5.7.0 Authentication required"
    peer.feed(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    assert peer.codes()[1:] == [250, 530, 503, 503]
    assert not peer.machine.in_transaction


def test_order_of_commands() -> None:
    peer = run(
        b"MAIL FROM:<a@x.test>\r\nDATA\r\nHELO c\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nDATA\r\n"
        b"RSET\r\nRCPT TO:<b@y.test>\r\nNOOP x\r\nVRFY b\r\nVRFY\r\nHELP\r\nEXPN x\r\nBDAT 1\r\n"
        b"FOO\r\n\r\nRSET x\r\n"
    )
    assert peer.codes()[1:] == [503, 503, 250, 503, 250, 503, 250, 503, 250, 252, 501, 502,
                                502, 502, 500, 500, 501]  # fmt: skip


# --- injection and limits in commands --------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@x.test>\rRCPT TO:<b@y.test>",
        b"MAIL FROM:<a@x.test>\nRCPT TO:<b@y.test>",
        b"MAIL FROM:<a\x00@x.test>",
        b"MAIL FROM:<a@x.test>\tSIZE=1",
        b"MAIL FROM:<\xff@x.test>",  # not UTF-8
    ],
)
def test_control_characters_in_commands_are_refused(line: bytes) -> None:
    peer = run(b"EHLO c\r\n" + line + b"\r\nNOOP\r\n")
    assert peer.codes()[1:] == [250, 500, 250]
    assert peer.events == [] and not peer.machine.in_transaction


def test_a_line_too_long_is_refused_and_the_session_goes_on() -> None:
    long = b"NOOP " + b"x" * 13000
    for cuts in ((), range(1000, len(long), 1000)):
        peer = run(b"EHLO c\r\n" + long + b"\r\nNOOP\r\n", cuts)
        assert peer.codes()[1:] == [250, 500, 250]
        assert peer.machine.buffered == 0


def test_too_many_errors_close_the_connection() -> None:
    peer = run(b"FOO\r\n" * 25)
    assert peer.codes()[1:] == [500] * 19 + [421]
    assert peer.machine.closed


def test_an_http_request_closes_the_connection() -> None:
    peer = run(b"POST / HTTP/1.1\r\nHost: x\r\n\r\nEHLO c\r\n")
    assert peer.codes()[1:] == [421] and peer.machine.closed


def test_quit_ends_the_input() -> None:
    peer = run(b"QUIT\r\nNOOP\r\n")
    assert peer.codes()[1:] == [221] and peer.events == [Quit()]
    peer.feed(b"NOOP\r\n")
    assert peer.codes()[1:] == [221]


# --- DATA ---------------------------------------------------------------------------------


def send(message: bytes, cuts: Iterable[int] = ()) -> Peer:
    head = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
    return run(head + message, [len(head) + c for c in cuts])


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (b".\r\n", b""),  # empty (refused below for want of From, but well framed)
        (MESSAGE + b".\r\n", MESSAGE),
        (MESSAGE + b"..\r\n.\r\n", MESSAGE + b".\r\n"),
        (MESSAGE + b"...x\r\n.\r\n", MESSAGE + b"..x\r\n"),
        (MESSAGE + b"a\r\n.a\r\n.\r\n", MESSAGE + b"a\r\na\r\n"),
        (MESSAGE + b"x\n.\nMAIL FROM:<e@vil>\r\n.\r\n", MESSAGE + b"x\n.\nMAIL FROM:<e@vil>\r\n"),
        (MESSAGE + b"x\r.\r\n.\r\n", MESSAGE + b"x\r.\r\n"),
        (b".From: a@x.test\r\n\r\n.\r\n", b"From: a@x.test\r\n\r\n"),
    ],
)
def test_end_of_data_and_dot_unstuffing(sent: bytes, stored: bytes) -> None:
    for cuts in ((), range(1, len(sent))):
        peer = send(sent + b"NOOP\r\n", cuts)
        if stored:
            assert data_of(peer) == [stored]
            assert peer.codes()[-2:] == [250, 250]
        else:
            assert peer.events[-1] == Rejected(RejectReason.BAD_CONTENT)


def test_size_limit_counts_the_unstuffed_data() -> None:
    header = b"From: a@x.test\r\n\r\n"
    line = b"x" * 98 + b"\r\n"
    fits = header + line * 40 + b"y" * (4096 - len(header) - 4000 - 2) + b"\r\n"
    assert len(fits) == 4096
    assert data_of(send(fits + b".\r\n")) == [fits]
    stuffed = header + b"..\r\n" * ((4096 - len(header)) // 3)  # unstuffed: 3 octets a line
    assert len(data_of(send(stuffed + b".\r\n"))[0]) <= 4096
    peer = send(fits + b"y\r\n.\r\nNOOP\r\n", range(7, 5000, 100))
    assert peer.events[-1] == Rejected(RejectReason.OVERSIZE)
    assert peer.replies()[-2].startswith("552 5.3.4") and peer.codes()[-1] == 250


def test_a_big_refused_message_is_drained_not_kept() -> None:
    peer = send(b"From: a@x.test\r\n\r\n")
    for _ in range(100):
        peer.feed(b"z" * 997 + b"\r\n")
        assert peer.machine.buffered < 8
    peer.feed(b".\r\nNOOP\r\n")
    assert peer.replies()[-2].startswith("552") and peer.codes()[-1] == 250


@pytest.mark.parametrize("cut", [None, 500, 999, 1000, 1001])
def test_line_length_limit(cut: int | None) -> None:
    header = b"From: a@x.test\r\n\r\n"
    ok = header + b"x" * 998 + b"\r\n"
    cuts = () if cut is None else (len(header) + cut,)
    assert data_of(send(ok + b".\r\n", cuts)) == [ok]
    bare = header + (b"y" * 99 + b"\n") * 30 + b"\r\n"  # short lines that end in bare LF
    assert data_of(send(bare + b".\r\n", cuts)) == [bare]
    peer = send(header + b"x" * 999 + b"\r\n.\r\nNOOP\r\n", cuts)
    assert peer.replies()[-2].startswith("554 5.6.0 Line too long")
    assert peer.codes()[-1] == 250
    peer = send(b"From: a@x.test\r\nX: " + b"h" * 1000 + b"\r\n\r\n.\r\n", cuts)
    assert peer.replies()[-1].startswith("554 5.6.0 Line too long")


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        (b"From: a@x.test\nBcc: e@vil.test\r\n\r\nbody\r\n", "bare CR or LF"),
        (b"From: a@x.test\rBcc: e@vil.test\r\n\r\nbody\r\n", "bare CR or LF"),
        (b"From: a@x.test\r\nSubject: a\x00b\r\n\r\n", "NUL"),
        (b"Subject: x\r\n\r\n", "no From"),
        (b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n", "more than one From"),
        (b"not a header\r\n", "not a header field"),
        (b"From: a@x.test\r\n" + (b"X-Big: " + b"y" * 500 + b"\r\n") * 2, "exceeds 1024"),
    ],
)
def test_header_section_is_checked(message: bytes, reply: str) -> None:
    for cuts in ((), range(1, len(message))):
        peer = send(message + b".\r\nNOOP\r\n", cuts)
        assert peer.events[-1] == Rejected(RejectReason.BAD_CONTENT)
        assert peer.replies()[-2].startswith("554 5.6.0") and reply in peer.replies()[-2]
        assert peer.codes()[-1] == 250


def test_nul_and_bare_lf_in_the_body_are_kept() -> None:
    message = MESSAGE + b"a\x00b\nc\r\n"
    assert data_of(send(message + b".\r\n")) == [message]


def unstuff_reference(sent: bytes) -> bytes:
    """What RFC 5321 §4.5.2 says, line by line: the slow, obvious way."""
    lines = sent.split(b"\r\n")
    end = lines.index(b".")
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines[:end])


body_lines = st.lists(
    st.sampled_from([b"", b".", b"..", b".x", b"x", b"a\nb", b"\n.\n", b"x\r", b"y" * 300]),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(body_lines, st.lists(st.integers(min_value=1, max_value=20000), max_size=10))
def test_reader_unstuffs_like_the_reference_for_any_split(
    lines: list[bytes], cuts: list[int]
) -> None:
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    sent = b"From: a@x.test\r\n\r\n" + body + b".\r\nleft over"
    reader = DataReader(1 << 20, 1024)
    buf, pos, done = b"", 0, False
    start = 0
    for cut in [*sorted(c for c in set(cuts) if c < len(sent)), len(sent)]:
        buf = buf[pos:] + sent[start:cut]
        start, pos = cut, 0
        pos, done = reader.feed(buf, pos)
        if done:
            break
    assert done and buf[pos:] + sent[start:] == b"left over"
    assert reader.finish() == (unstuff_reference(sent), None)


# --- STARTTLS and AUTH ----------------------------------------------------------------


def test_starttls_drops_what_was_pipelined_and_starts_over() -> None:
    peer = Peer(TLS_CONFIG)
    peer.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
    assert peer.events == [StartTLS()] and peer.replies()[-1] == "220 2.0.0 Ready to start TLS"
    peer.feed(b"RCPT TO:<injected@x.test>\r\n")  # still plaintext: dropped
    assert peer.machine.next_event() is None
    peer.machine.tls_started()
    assert peer.machine.tls and peer.machine.helo is None
    peer.feed(b"MAIL FROM:<a@x.test>\r\nEHLO c\r\nSTARTTLS\r\n")
    assert peer.codes()[-3:] == [503, 250, 503]  # HELO again first; no second STARTTLS
    assert "250 AUTH LOGIN PLAIN" in peer.replies()


def test_starttls_needs_an_offer_and_no_transaction() -> None:
    assert run(b"EHLO c\r\nSTARTTLS\r\n").codes()[-1] == 502
    peer = run(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nSTARTTLS\r\nSTARTTLS x\r\n", config=TLS_CONFIG)
    assert peer.codes()[-2:] == [503, 501]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


APP_PW = b64(b"\x00app\x00pw")
A_B = b64(b"\x00a\x00b")


def auth_session(*lines: str) -> Peer:
    return run(
        ("EHLO c\r\n" + "".join(f"{x}\r\n" for x in lines)).encode(), config=TLS_CONFIG, tls=True
    )


def test_auth_plain_and_login() -> None:
    peer = auth_session(f"AUTH PLAIN {APP_PW}", "MAIL FROM:<a@x.test>")
    assert peer.events[0] == AuthRequest("PLAIN", b"", b"app", b"pw")
    assert peer.codes()[-2:] == [235, 250] and peer.machine.auth_user == "app"
    peer = auth_session("AUTH PLAIN", b64(b"root\x00app\x00pw"))
    assert peer.replies()[-2] == "334 " and peer.events[0] == AuthRequest(
        "PLAIN", b"root", b"app", b"pw"
    )
    peer = auth_session("AUTH LOGIN", b64(b"app"), b64(b"pw"))
    assert [r for r in peer.replies() if r[:3] == "334"] == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]
    assert peer.events == [AuthRequest("LOGIN", b"", b"app", b"pw")]
    peer = auth_session(f"AUTH LOGIN {b64(b'app')}", "=")
    assert peer.events == [AuthRequest("LOGIN", b"", b"app", b"")]
    assert "pw" not in repr(AuthRequest("PLAIN", b"", b"app", b"pw"))


def test_auth_errors() -> None:
    assert auth_session("AUTH LOGIN", "*").codes()[-1] == 501
    assert auth_session("AUTH PLAIN !!notbase64").codes()[-1] == 501
    assert auth_session(f"AUTH PLAIN {b64(b'no-nuls')}").codes()[-1] == 501
    assert auth_session("AUTH CRAM-MD5").codes()[-1] == 504
    assert auth_session("AUTH").codes()[-1] == 501
    assert auth_session("MAIL FROM:<a@x.test>", "AUTH PLAIN =").codes()[-1] == 503
    assert auth_session(f"AUTH PLAIN {A_B}", "AUTH PLAIN =").codes()[-1] == 503
    assert run(b"EHLO c\r\nAUTH PLAIN =\r\n", config=TLS_CONFIG).codes()[-1] == 538
    assert run(b"EHLO c\r\nAUTH PLAIN =\r\n").codes()[-1] == 502  # not offered
    assert run(b"HELO c\r\nAUTH PLAIN =\r\n", config=TLS_CONFIG, tls=True).codes()[-1] == 502
    refused = Peer(TLS_CONFIG, tls=True)
    refused.machine.receive(f"EHLO c\r\nAUTH PLAIN {A_B}\r\n".encode())
    assert isinstance(refused.machine.next_event(), AuthRequest)
    refused.machine.refuse("535 5.7.8 Authentication credentials invalid")
    assert refused.machine.auth_user is None


def test_answers_must_fit_the_event() -> None:
    machine = ServerMachine(TLS_CONFIG)
    with pytest.raises(RuntimeError):
        machine.accept()
    machine.receive(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n")
    assert isinstance(machine.next_event(), MailFrom)
    with pytest.raises(RuntimeError):
        machine.accept_auth("x")
    with pytest.raises(RuntimeError):
        machine.tls_started()
    with pytest.raises(ValueError):
        machine.accept("250 ok\r\nINJECTED")
    machine.accept()
    assert machine.in_transaction


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="host name"):
        ServerConfig(hostname="a b", max_message_size=1, max_header_size=1, max_recipients=1)
    with pytest.raises(ValueError, match="CRAM-MD5"):
        ServerConfig(
            hostname="a", max_message_size=1, max_header_size=1, max_recipients=1,
            auth_mechanisms=("CRAM-MD5",),
        )  # fmt: skip
    # A float limit would pass `< 1` and then fail mid-session in the compiled reader.
    with pytest.raises(ValueError, match="max_message_size must be a whole number"):
        ServerConfig(hostname="a", max_message_size=10e6, max_header_size=1, max_recipients=1)  # type: ignore[arg-type]
