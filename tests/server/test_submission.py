"""The submission listener against real clients on loopback: swaks, smtplib, raw bytes.

The server runs in the test's event loop; blocking clients (smtplib) run in a thread.
Every peer is 127.0.0.1, so relay refusal is shown with trusted_networks=() and relay
without AUTH with trusted_networks=("127.0.0.0/8",).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mxpress.errors import ConfigError
from mxpress.security.passwords import hash_password
from mxpress.server import Submission, SubmissionServer
from tests.lab.servers import TestCA

HOST = "127.0.0.1"
PASSWORD = "s3cret-pw"
# A cheap hash (n=1024) keeps the tests fast; the default cost is tested in test_passwords.
USERS = {"app": hash_password(PASSWORD, n=1024)}
MESSAGE = (
    b"From: App <app@example.test>\r\nTo: u@example.test\r\nSubject: hi\r\n\r\n"
    b"Hello.\r\n.a line that starts with a dot\r\n"
)


class FakeQueue:
    """`accept` for the listener: records what was stored; can fail or wait on demand."""

    def __init__(self) -> None:
        self.stored: list[Submission] = []
        self.calls = 0
        self.fail_next = 0
        self.gate: asyncio.Event | None = None  # while set to an unset Event, accept waits
        self.entered = asyncio.Event()

    async def __call__(self, submission: Submission) -> str:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("disk full (test)")
        self.stored.append(submission)
        return f"Q{len(self.stored)}"


@pytest.fixture
def queue() -> FakeQueue:
    return FakeQueue()


Factory = Callable[..., Awaitable[SubmissionServer]]


@pytest.fixture
async def make_server(queue: FakeQueue, lab_ca: TestCA) -> AsyncIterator[Factory]:
    servers: list[SubmissionServer] = []

    async def make(**options: Any) -> SubmissionServer:
        kwargs: dict[str, Any] = {
            "port": 0,
            "tls_context": lab_ca.server_context(),
            "users": USERS,
            "hostname": "smtp.test",
        }
        kwargs.update(options)
        server = SubmissionServer(queue, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop(grace=1)


@pytest.fixture
async def server(make_server: Factory) -> SubmissionServer:
    return await make_server()


class Raw:
    """A byte-level client: sends exactly what a test says, reads whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection(HOST, port)
        raw = cls(reader, writer)
        assert (await raw.reply())[0] == 220
        return raw

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                raise ConnectionError("closed")
            lines.append(line.decode("utf-8").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[0][:3]), "\n".join(x[4:] for x in lines)

    async def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return await self.reply()

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        assert (await self.cmd("STARTTLS"))[0] == 220
        await self.writer.start_tls(ctx, server_hostname=HOST)

    async def send_message(self, data: bytes, *, sender: str = "app@example.test") -> str:
        """MAIL, RCPT, DATA with `data` sent raw (already dot-stuffed); the final reply."""
        assert (await self.cmd(f"MAIL FROM:<{sender}>"))[0] == 250
        assert (await self.cmd("RCPT TO:<u@example.test>"))[0] == 250
        assert (await self.cmd("DATA"))[0] == 354
        code, text = await self.cmd(data + b".\r\n")
        return f"{code} {text}"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def smtplib_send(port: int, ca: TestCA, *, login: bool, method: str = "") -> tuple[int, bytes]:
    """STARTTLS (verifying the lab CA), optionally AUTH, one message; DATA's reply."""
    with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=ca.client_context())
        s.ehlo()  # STARTTLS forgets the EHLO (RFC 3207 §4.2)
        if login and method:
            s.user, s.password = "app", PASSWORD
            s.auth(method, getattr(s, f"auth_{method.lower()}"), initial_response_ok=False)
        elif login:
            s.login("app", PASSWORD)
        code, msg = s.mail("app@example.test")
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, msg, "app@example.test")
        assert s.rcpt("u@example.test")[0] == 250
        assert s.rcpt("v@example.test")[0] == 250
        return s.data(MESSAGE)


# --- real clients: smtplib and swaks over STARTTLS + AUTH --------------------------------


@pytest.mark.parametrize("method", ["", "PLAIN", "LOGIN"])
async def test_smtplib_starttls_auth_is_queued(
    server: SubmissionServer, queue: FakeQueue, lab_ca: TestCA, method: str
) -> None:
    code, text = await asyncio.to_thread(
        smtplib_send, server.port, lab_ca, login=True, method=method
    )
    assert (code, text) == (250, b"2.0.0 Ok: queued as Q1")
    [sub] = queue.stored
    assert sub.sender == "app@example.test"
    assert sub.recipients == ("u@example.test", "v@example.test")
    assert sub.data == MESSAGE  # smtplib dot-stuffed ".a", the server unstuffed it
    assert (sub.auth_user, sub.peer, sub.tls, sub.helo) == ("app", HOST, True, "client.test")
    assert server.stats.messages == 1


def swaks_or_skip() -> str:
    found = shutil.which("swaks")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide swaks (Debian package 'swaks')")
        pytest.skip("swaks is not installed")
    return found


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks_starttls_auth_is_queued(
    server: SubmissionServer, queue: FakeQueue, lab_ca: TestCA, mechanism: str
) -> None:
    swaks = swaks_or_skip()
    proc = await asyncio.create_subprocess_exec(
        swaks, "--server", f"{HOST}:{server.port}", "-tls", "--tls-verify",
        "--tls-ca-path", str(lab_ca.ca_pem), "--auth", mechanism, "--auth-user", "app",
        "--auth-password", PASSWORD, "--ehlo", "swaks.test", "--from", "app@example.test",
        "--to", "u@example.test", "--h-Subject", "from swaks", "--body", "hello from swaks",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    output = out.decode()
    assert proc.returncode == 0, output
    assert "250 2.0.0 Ok: queued as Q1" in output
    [sub] = queue.stored
    assert (sub.auth_user, sub.tls, sub.helo) == ("app", True, "swaks.test")
    assert b"Subject: from swaks\r\n" in sub.data and b"hello from swaks" in sub.data


async def test_swaks_without_auth_is_refused(server: SubmissionServer, queue: FakeQueue) -> None:
    swaks = swaks_or_skip()
    proc = await asyncio.create_subprocess_exec(
        swaks, "--server", f"{HOST}:{server.port}", "-tls", "--from", "app@example.test",
        "--to", "u@example.test", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 23, out.decode()  # swaks: "error in MAIL transaction"
    assert "530 5.7.0 Authentication required" in out.decode()
    assert queue.calls == 0


async def test_implicit_tls(make_server: Factory, queue: FakeQueue, lab_ca: TestCA) -> None:
    server = await make_server(implicit_tls=True)

    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP_SSL(HOST, server.port, context=lab_ca.client_context()) as s:
            s.login("app", PASSWORD)
            return s.sendmail("app@example.test", ["u@example.test"], MESSAGE)

    assert await asyncio.to_thread(send) == {}
    assert queue.stored[0].tls and queue.stored[0].auth_user == "app"


# --- relay control: never an open relay ----------------------------------------------------


async def test_unauthenticated_relay_is_refused(
    server: SubmissionServer, queue: FakeQueue, lab_ca: TestCA
) -> None:
    with pytest.raises(smtplib.SMTPSenderRefused) as exc:
        await asyncio.to_thread(smtplib_send, server.port, lab_ca, login=False)
    assert (exc.value.smtp_code, exc.value.smtp_error) == (530, b"5.7.0 Authentication required")
    raw = await Raw.open(server.port)  # plaintext, no STARTTLS: the same
    assert (await raw.cmd("EHLO client.test"))[0] == 250
    assert await raw.cmd("MAIL FROM:<app@example.test>") == (530, "5.7.0 Authentication required")
    assert (await raw.cmd("RCPT TO:<u@example.test>"))[0] == 503  # no transaction
    await raw.close()
    assert queue.calls == 0
    assert server.stats.rejected == {"auth_required": 2}


async def test_trusted_network_relays_without_auth(make_server: Factory, queue: FakeQueue) -> None:
    server = await make_server(trusted_networks=("127.0.0.0/8",))

    def send() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP(HOST, server.port, timeout=10) as s:
            return s.sendmail("app@example.test", ["u@example.test"], MESSAGE)

    assert await asyncio.to_thread(send) == {}
    [sub] = queue.stored
    assert (sub.auth_user, sub.tls, sub.peer) == (None, False, HOST)


async def test_a_network_that_does_not_hold_the_peer_does_not_help(make_server: Factory) -> None:
    server = await make_server(trusted_networks=("10.0.0.0/8", "::1/128"))
    raw = await Raw.open(server.port)
    await raw.cmd("EHLO client.test")
    assert (await raw.cmd("MAIL FROM:<app@example.test>"))[0] == 530
    await raw.close()


def test_trust_answers_are_remembered_per_peer_and_bounded(queue: FakeQueue) -> None:
    server = SubmissionServer(queue, trusted_networks=("10.0.0.0/8", "::ffff:0:0/96"))
    peers = {"10.1.2.3": True, "::ffff:10.0.0.1": True, "192.0.2.1": False, "junk": False}
    for _ in range(2):  # the second round answers from the cache: the same
        assert {p: server.is_trusted(p) for p in peers} == peers
    for i in range(5000):  # a flood of distinct peers does not grow it without end
        assert not server.is_trusted(f"192.0.{i // 256}.{i % 256}")
    assert len(server._trust_cache) <= 4096
    assert server.is_trusted("10.1.2.3")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trusted_networks": ("0.0.0.0/0",)}, "open relay"),
        ({"trusted_networks": ("::/0",)}, "open relay"),
        ({"trusted_networks": ("10.0.0.1/8",)}, "not a network"),
        ({"trusted_networks": "127.0.0.0/8"}, "not one string"),
        ({"users": {"app": "plaintext"}}, "user 'app'"),
        ({"implicit_tls": True}, "tls_context"),
        ({"max_message_size": 0}, "max_message_size"),
        ({"max_message_size": 10e6}, "max_message_size must be a whole number"),
        ({"max_recipients": True}, "max_recipients must be a whole number"),
    ],
)
def test_config_errors(options: dict[str, Any], message: str, queue: FakeQueue) -> None:
    with pytest.raises(ConfigError, match=message):
        SubmissionServer(queue, **options)


# --- AUTH -------------------------------------------------------------------------------


async def test_auth_is_offered_and_accepted_only_over_tls(
    server: SubmissionServer, lab_ca: TestCA
) -> None:
    raw = await Raw.open(server.port)
    code, ehlo = await raw.cmd("EHLO client.test")
    assert "AUTH" not in ehlo and "STARTTLS" in ehlo and "SIZE 10485760" in ehlo
    assert "PIPELINING" in ehlo
    code, text = await raw.cmd(f"AUTH PLAIN {plain('app', PASSWORD)}")
    assert (code, text) == (
        538,
        "5.7.11 Encryption required for requested authentication mechanism",
    )
    await raw.starttls(lab_ca.client_context())
    code, ehlo = await raw.cmd("EHLO client.test")
    assert "AUTH LOGIN PLAIN" in ehlo and "STARTTLS" not in ehlo
    assert await raw.cmd(f"AUTH PLAIN {plain('app', PASSWORD)}") == (
        235,
        "2.7.0 Authentication successful",
    )
    assert (await raw.cmd(f"AUTH PLAIN {plain('app', PASSWORD)}"))[0] == 503
    await raw.close()


async def test_bad_credentials_get_535_and_the_third_failure_closes(
    server: SubmissionServer, lab_ca: TestCA
) -> None:
    raw = await Raw.open(server.port)
    await raw.starttls(lab_ca.client_context())
    await raw.cmd("EHLO client.test")
    bad = "535 5.7.8 Authentication credentials invalid"
    code, text = await raw.cmd(f"AUTH PLAIN {plain('app', 'wrong')}")
    assert f"{code} {text}" == bad
    code, text = await raw.cmd(f"AUTH PLAIN {plain('nobody', PASSWORD)}")  # unknown user
    assert f"{code} {text}" == bad
    assert (await raw.cmd("AUTH PLAIN !!notbase64"))[0] == 501  # not a guess: not counted
    code, _ = await raw.cmd(f"AUTH PLAIN {plain('app', PASSWORD, authzid='root')}")
    assert code == 421  # acting as someone else is refused, and that was the third
    with pytest.raises(ConnectionError):
        await raw.cmd("NOOP")
    await raw.close()
    assert server.stats.rejected == {"auth_failed": 3, "auth_lockout": 1}


async def test_auth_login_with_challenges_and_cancel(
    server: SubmissionServer, lab_ca: TestCA
) -> None:
    raw = await Raw.open(server.port)
    await raw.starttls(lab_ca.client_context())
    await raw.cmd("EHLO client.test")
    assert await raw.cmd("AUTH LOGIN") == (334, base64.b64encode(b"Username:").decode())
    assert (await raw.cmd("*"))[0] == 501  # the client cancels
    assert (await raw.cmd("AUTH CRAM-MD5"))[0] == 504
    assert (await raw.cmd(f"AUTH LOGIN {base64.b64encode(b'app').decode()}"))[0] == 334
    assert (await raw.cmd(base64.b64encode(PASSWORD.encode()).decode()))[0] == 235
    await raw.close()


# --- bad input: clear replies, nothing stored ---------------------------------------------


@pytest.fixture
async def trusted(make_server: Factory) -> SubmissionServer:
    """Relays for 127.0.0.0/8 without AUTH, 4 KiB messages, 2 recipients."""
    return await make_server(
        trusted_networks=("127.0.0.0/8",), max_message_size=4096, max_header_size=1024,
        max_recipients=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<a b@example.test>", "553 5.1.7 Bad sender address"),
        ("MAIL FROM:<app@@example.test>", "553 5.1.7 Bad sender address"),
        ("MAIL FROM:<app@example.test", "553"),
        ("MAIL FROM:<>", "250"),  # the null sender is taken: bounces need it
        ("MAIL FROM:<jörg@example.test>", "553 5.1.7 Bad sender address"),  # no SMTPUTF8
        (f"MAIL FROM:<{'x' * 65}@example.test>", "553 5.1.7 Bad sender address"),
        ("MAIL FROM:<app@example.test> SIZE=5000", "552 5.3.4"),
        ("MAIL FROM:<app@example.test> FOO=BAR", "555"),  # unknown parameter
    ],
)
async def test_bad_mail_from(trusted: SubmissionServer, command: str, reply: str) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    code, text = await raw.cmd(command)
    assert f"{code} {text}".startswith(reply)
    await raw.close()


async def test_recipients_checked_and_limited(trusted: SubmissionServer, queue: FakeQueue) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    assert (await raw.cmd("MAIL FROM:<app@example.test> SMTPUTF8"))[0] == 250
    code, text = await raw.cmd("RCPT TO:<postmaster>")
    assert code == 553 and "needs a domain" in text
    assert (await raw.cmd("RCPT TO:<user@exa mple.test>"))[0] in (501, 553)
    assert (await raw.cmd("RCPT TO:<jörg@example.test>"))[0] == 250  # SMTPUTF8 given
    assert (await raw.cmd("RCPT TO:<u@example.test>"))[0] == 250
    assert await raw.cmd("RCPT TO:<v@example.test>") == (
        452,
        "4.5.3 Too many recipients (at most 2)",
    )
    assert (await raw.cmd("DATA"))[0] == 354
    assert (await raw.cmd(MESSAGE + b".\r\n"))[0] == 250
    await raw.close()
    assert queue.stored[0].recipients == ("jörg@example.test", "u@example.test")
    assert queue.stored[0].smtputf8


BARE = "554 5.6.0 header section contains a bare CR or LF"
BIG_HEADER = b"From: a@x.test\r\n" + (b"X-Big: " + b"y" * 600 + b"\r\n") * 2


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"From: a@example.test\nBcc: x@evil.test\r\n\r\nbody\r\n", BARE),
        (b"From: a@example.test\rBcc: x@evil.test\r\n\r\nbody\r\n", BARE),
        (b"From: a@x.test\r\nSubject: a\x00b\r\n\r\n", "554 5.6.0 header section contains a NUL"),
        (b"Subject: no sender\r\n\r\nbody\r\n", "554 5.6.0 message has no From header"),
        (b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n", "554 5.6.0 message has more than one From"),
        (b"just text, no header\r\n", "554 5.6.0 not a header field"),
        (b" folded first\r\nFrom: a@x.test\r\n\r\n", "554 5.6.0 message starts with a folded"),
        (BIG_HEADER, "554 5.6.0 header section exceeds 1024"),
        (b"From: a@x.test\r\n\r\n" + (b"z" * 998 + b"\r\n") * 5, "552 5.3.4 Message size exceeds"),
        (b"From: a@x.test\r\n\r\n" + b"z" * 3000 + b"\r\n", "554 5.6.0 Line too long"),
    ],
)
async def test_bad_data_is_refused_and_nothing_stored(
    trusted: SubmissionServer, queue: FakeQueue, data: bytes, reply: str
) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    assert (await raw.send_message(data)).startswith(reply)
    assert queue.calls == 0
    # The session goes on: the next, clean message is accepted.
    assert await raw.send_message(MESSAGE) == "250 2.0.0 Ok: queued as Q1"
    await raw.close()


async def test_bare_lf_in_the_body_is_kept_and_cannot_end_the_message(
    trusted: SubmissionServer, queue: FakeQueue
) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    smuggled = b"From: a@x.test\r\n\r\nbody\n.\nMAIL FROM:<x@evil.test>\r\n..dot\r\n"
    assert (await raw.send_message(smuggled)).startswith("250")
    await raw.close()
    assert queue.stored[0].data == smuggled.replace(b"\r\n..dot", b"\r\n.dot")


async def test_pipelined_transaction(trusted: SubmissionServer, queue: FakeQueue) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    raw.writer.write(b"MAIL FROM:<app@example.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
    assert [(await raw.reply())[0] for _ in range(3)] == [250, 250, 354]
    raw.writer.write(MESSAGE + b".\r\nMAIL FROM:<app@example.test>\r\nQUIT\r\n")
    assert [(await raw.reply())[0] for _ in range(3)] == [250, 250, 221]
    await raw.close()
    assert len(queue.stored) == 1


async def test_accept_failure_is_451_and_the_client_can_retry(
    server: SubmissionServer, queue: FakeQueue, lab_ca: TestCA
) -> None:
    queue.fail_next = 1
    with pytest.raises(smtplib.SMTPDataError) as exc:

        def send_twice() -> tuple[int, bytes]:
            with smtplib.SMTP(HOST, server.port, timeout=10) as s:
                s.starttls(context=lab_ca.client_context())
                s.login("app", PASSWORD)
                try:
                    s.sendmail("app@example.test", ["u@example.test"], MESSAGE)
                except smtplib.SMTPDataError:
                    s.sendmail("app@example.test", ["u@example.test"], MESSAGE)  # retry
                    raise
            raise AssertionError("the first try should have failed")

        await asyncio.to_thread(send_twice)
    assert exc.value.smtp_code == 451 and exc.value.smtp_error[:5] == b"4.3.0"
    assert queue.calls == 2 and len(queue.stored) == 1
    assert server.stats.rejected == {"accept_failed": 1} and server.stats.messages == 1


# --- graceful stop ------------------------------------------------------------------------


async def test_stop_finishes_the_transaction_in_flight_and_refuses_new_ones(
    trusted: SubmissionServer, queue: FakeQueue
) -> None:
    queue.gate = asyncio.Event()
    busy = await Raw.open(trusted.port)
    idle = await Raw.open(trusted.port)
    await busy.cmd("EHLO client.test")
    await idle.cmd("EHLO client.test")
    sending = asyncio.create_task(busy.send_message(MESSAGE))
    await asyncio.wait_for(queue.entered.wait(), 5)  # the queue is "fsyncing"
    stopping = asyncio.create_task(trusted.stop(grace=10))
    await asyncio.sleep(0)  # stop() closes the listening socket before its first await
    assert trusted.stopping
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, trusted.port)
    assert (await idle.reply())[0] == 421  # idle: told at once
    assert not stopping.done()
    queue.gate.set()
    assert await sending == "250 2.0.0 Ok: queued as Q1"  # the 250 comes after the store
    assert (await busy.reply())[0] == 421  # then the connection is closed
    await asyncio.wait_for(stopping, 5)
    assert len(queue.stored) == 1
    for raw in (busy, idle):
        await raw.close()


async def test_stop_cuts_a_stalled_transaction_after_grace(trusted: SubmissionServer) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    assert (await raw.cmd("MAIL FROM:<app@example.test>"))[0] == 250
    await asyncio.wait_for(trusted.stop(grace=0.2), 5)
    with pytest.raises(ConnectionError):
        await raw.cmd("RCPT TO:<u@example.test>")
    await raw.close()
    assert trusted.stats.active == 0


# --- the connection's I/O: idle timeout, big messages, a client that leaves, TLS failure ---


async def wait_until_idle(server: SubmissionServer) -> None:
    for _ in range(200):
        if server.stats.active == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server.stats.active} connections still open")


async def test_an_idle_client_is_told_and_closed(make_server: Factory) -> None:
    server = await make_server(timeout=0.3)
    raw = await Raw.open(server.port)
    assert (await raw.cmd("EHLO client.test"))[0] == 250
    assert await raw.reply() == (421, "4.4.2 Idle timeout, closing connection")
    assert await raw.reader.read() == b""
    await raw.close()
    await wait_until_idle(server)


async def test_a_big_message_arrives_whole(make_server: Factory, queue: FakeQueue) -> None:
    server = await make_server(trusted_networks=("127.0.0.0/8",))
    body = b"".join(b"%07d " % i + b"x" * 90 + b"\r\n" for i in range(80_000))  # 7.8 MB
    raw = await Raw.open(server.port)
    await raw.cmd("EHLO client.test")
    message = MESSAGE + b".starts with a dot\r\n" + body
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    assert (await raw.send_message(stuffed)).startswith("250 2.0.0 Ok: queued as Q1")
    await raw.close()
    assert queue.stored[0].data == message


async def test_null_sender_is_queued(trusted: SubmissionServer, queue: FakeQueue) -> None:
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    assert (await raw.send_message(MESSAGE, sender="")).startswith("250")
    await raw.close()
    assert queue.stored[0].sender == ""


async def test_a_client_that_leaves_mid_fsync_still_gets_stored(
    trusted: SubmissionServer, queue: FakeQueue
) -> None:
    queue.gate = asyncio.Event()
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    sending = asyncio.create_task(raw.send_message(MESSAGE))
    await asyncio.wait_for(queue.entered.wait(), 5)
    sending.cancel()
    raw.writer.transport.abort()
    await asyncio.sleep(0.05)
    queue.gate.set()
    await wait_until_idle(trusted)
    assert trusted.stats.messages == 1 and len(queue.stored) == 1


async def test_a_failed_tls_handshake_closes_the_connection(
    make_server: Factory, queue: FakeQueue
) -> None:
    server = await make_server()
    raw = await Raw.open(server.port)
    assert (await raw.cmd("STARTTLS"))[0] == 220
    raw.writer.write(b"EHLO this is not a TLS client hello\r\n" * 10)
    assert await asyncio.wait_for(raw.reader.read(), 10) == b""
    await raw.close()
    await wait_until_idle(server)


async def test_replies_are_not_held_back_by_nagle(trusted: SubmissionServer) -> None:
    raw = await Raw.open(trusted.port)
    (conn,) = trusted._connections  # (private: the server side of the socket)
    sock = conn._transport.get_extra_info("socket") if conn._transport else None
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await raw.close()


class _SocketOnly(asyncio.BaseTransport):
    """A transport stand-in that only answers get_extra_info("socket")."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


def test_nodelay_is_set_when_the_loop_does_not_set_it() -> None:
    server = SubmissionServer(FakeQueue(), port=0)
    with socket.socket() as first, socket.socket() as second:
        server.ensure_nodelay(_SocketOnly(first))
        server.ensure_nodelay(_SocketOnly(second))
        assert first.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert second.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_nodelay_is_left_to_a_loop_that_sets_it() -> None:
    server = SubmissionServer(FakeQueue(), port=0)
    with socket.socket() as first, socket.socket() as later:
        first.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the loop does
        server.ensure_nodelay(_SocketOnly(first))
        server.ensure_nodelay(_SocketOnly(later))
        # Learnt from the first: the loop's own setting is trusted, no socket calls.
        assert not later.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_a_client_that_half_closes_still_gets_its_replies(
    trusted: SubmissionServer, queue: FakeQueue
) -> None:
    queue.gate = asyncio.Event()
    raw = await Raw.open(trusted.port)
    await raw.cmd("EHLO client.test")
    raw.writer.write(b"MAIL FROM:<app@example.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n")
    assert [(await raw.reply())[0] for _ in range(3)] == [250, 250, 354]
    raw.writer.write(MESSAGE + b".\r\nQUIT\r\n")
    raw.writer.write_eof()
    await asyncio.wait_for(queue.entered.wait(), 5)
    queue.gate.set()
    assert [(await raw.reply())[0] for _ in range(2)] == [250, 221]
    assert await raw.reader.read() == b""
    await raw.close()
    await wait_until_idle(trusted)
