from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from mxpress.protocol.extensions import HELO_CAPABILITIES, Capabilities, parse_ehlo
from mxpress.protocol.replies import Reply, ReplyParser


def ehlo_reply(text: bytes) -> Reply:
    (reply,) = ReplyParser().feed(text)
    return reply


POSTFIX = (
    b"250-mx.example.com\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-VRFY\r\n"
    b"250-ETRN\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-AUTH=PLAIN LOGIN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n"
    b"250-DSN\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 CHUNKING\r\n"
)

GMAIL = (
    b"250-smtp.gmail.com at your service, [192.0.2.7]\r\n"
    b"250-SIZE 35882577\r\n"
    b"250-8BITMIME\r\n"
    b"250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-PIPELINING\r\n"
    b"250-CHUNKING\r\n"
    b"250 SMTPUTF8\r\n"
)

EXCHANGE = (
    b"250-EX01.corp.example.com Hello [192.0.2.7]\r\n"
    b"250-SIZE 37748736\r\n"
    b"250-PIPELINING\r\n"
    b"250-DSN\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-STARTTLS\r\n"
    b"250-X-ANONYMOUSTLS\r\n"
    b"250-AUTH NTLM\r\n"
    b"250-X-EXPS GSSAPI NTLM\r\n"
    b"250-8BITMIME\r\n"
    b"250-BINARYMIME\r\n"
    b"250-CHUNKING\r\n"
    b"250 XRDST\r\n"
)


def test_postfix() -> None:
    caps = parse_ehlo(ehlo_reply(POSTFIX))
    assert caps == Capabilities(
        pipelining=True,
        chunking=True,
        size=10240000,
        eightbitmime=True,
        smtputf8=True,
        starttls=True,
        auth=frozenset({"PLAIN", "LOGIN"}),
        dsn=True,
        enhancedstatuscodes=True,
        keywords=caps.keywords,
    )
    assert not caps.binarymime
    assert caps.esmtp
    assert caps.keywords["AUTH"] == "PLAIN LOGIN"
    assert caps.keywords["SIZE"] == "10240000"
    assert caps.keywords["VRFY"] == ""
    assert caps.supports("etrn") and caps.supports("VRFY")
    assert not caps.supports("XCLIENT")
    assert "MX.EXAMPLE.COM" not in caps.keywords  # the greeting line is not a keyword


def test_gmail() -> None:
    caps = parse_ehlo(ehlo_reply(GMAIL))
    assert caps.size == 35882577
    assert caps.auth == frozenset(
        {"LOGIN", "PLAIN", "XOAUTH2", "PLAIN-CLIENTTOKEN", "OAUTHBEARER", "XOAUTH"}
    )
    assert caps.pipelining and caps.chunking and caps.smtputf8 and caps.eightbitmime
    assert not caps.starttls and not caps.dsn


def test_exchange() -> None:
    caps = parse_ehlo(ehlo_reply(EXCHANGE))
    assert caps.binarymime and caps.chunking and caps.dsn and caps.starttls
    assert caps.auth == frozenset({"NTLM"})
    assert caps.keywords["X-EXPS"] == "GSSAPI NTLM"
    assert caps.supports("x-anonymoustls")
    assert not caps.smtputf8


def test_lowercase_keywords_and_mechanisms() -> None:
    caps = parse_ehlo(
        ehlo_reply(
            b"250-mx\r\n250-pipelining\r\n250-size 1000\r\n250-Auth plain cram-md5\r\n250 dsn\r\n"
        )
    )
    assert caps.pipelining and caps.dsn
    assert caps.size == 1000
    assert caps.auth == frozenset({"PLAIN", "CRAM-MD5"})
    assert set(caps.keywords) == {"PIPELINING", "SIZE", "AUTH", "DSN"}


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"SIZE", 0),
        (b"SIZE 0", 0),
        (b"SIZE  52428800 ", 52428800),
        (b"SIZE unlimited", 0),
        (b"SIZE -1", 0),
        (b"SIZE 1e9", 0),
        (b"SIZE " + b"9" * 5000, 0),
        ("SIZE \u0661\u0662".encode(), 0),
    ],
)
def test_size_values(line: bytes, size: int) -> None:
    caps = parse_ehlo(ehlo_reply(b"250-mx\r\n250 " + line + b"\r\n"))
    assert caps.size == size


def test_no_size() -> None:
    assert parse_ehlo(ehlo_reply(b"250-mx\r\n250 PIPELINING\r\n")).size is None


def test_greeting_only() -> None:
    caps = parse_ehlo(ehlo_reply(b"250 mx.example.com\r\n"))
    assert caps == Capabilities()
    assert caps.esmtp
    assert not caps.keywords


def test_old_auth_form_only() -> None:
    caps = parse_ehlo(ehlo_reply(b"250-mx\r\n250 AUTH=LOGIN PLAIN\r\n"))
    assert caps.auth == frozenset({"LOGIN", "PLAIN"})
    assert caps.supports("AUTH")


def test_junk_lines_are_skipped() -> None:
    caps = parse_ehlo(
        ehlo_reply(
            b"250-mx\r\n"
            b"250-\r\n"
            b"250-   \r\n"
            b"250-!!! hello \xff\r\n"
            b"250--DASH\r\n"
            b"250-PIPE_LINING\r\n"
            b"250- CHUNKING \r\n"
            b"250-\tSTARTTLS\r\n"
            b"250 8BITMIME\r\n"
        )
    )
    assert caps.chunking and caps.starttls and caps.eightbitmime
    assert not caps.pipelining
    assert set(caps.keywords) == {"CHUNKING", "STARTTLS", "8BITMIME"}


def test_helo_capabilities() -> None:
    assert not HELO_CAPABILITIES.esmtp
    assert not HELO_CAPABILITIES.pipelining
    assert HELO_CAPABILITIES.size is None
    assert HELO_CAPABILITIES.auth == frozenset()
    assert not HELO_CAPABILITIES.supports("PIPELINING")


def test_capabilities_frozen_and_hashable() -> None:
    caps = parse_ehlo(ehlo_reply(POSTFIX))
    with pytest.raises(FrozenInstanceError):
        caps.pipelining = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        caps.keywords["X"] = ""  # type: ignore[index]
    assert hash(caps) == hash(parse_ehlo(ehlo_reply(POSTFIX)))
    assert caps == parse_ehlo(ehlo_reply(POSTFIX))
