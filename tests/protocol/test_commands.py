from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxpress.errors import LocalProtocolError, RemoteProtocolError
from mxpress.protocol import commands
from mxpress.protocol.commands import (
    auth,
    auth_continue,
    bdat,
    data,
    ehlo,
    helo,
    mail_from,
    noop,
    quit,
    rcpt_to,
    rset,
    starttls,
    validate_address,
    xtext,
    xtext_decode,
)

# --- exact bytes -----------------------------------------------------------------------


def test_constant_commands() -> None:
    assert data() == b"DATA\r\n"
    assert rset() == b"RSET\r\n"
    assert noop() == b"NOOP\r\n"
    assert quit() == b"QUIT\r\n"
    assert starttls() == b"STARTTLS\r\n"
    assert data() is commands.DATA  # precomputed, not rebuilt per call


def test_ehlo_helo() -> None:
    assert ehlo("client.example.com") == b"EHLO client.example.com\r\n"
    assert helo("client.example.com") == b"HELO client.example.com\r\n"
    assert ehlo("[192.0.2.1]") == b"EHLO [192.0.2.1]\r\n"


@pytest.mark.parametrize("name", ["", "a b", "a\r\nMAIL FROM:<x@y>", "a\x00", "h\u00e9.example"])
def test_ehlo_helo_refuse(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        ehlo(name)
    with pytest.raises(LocalProtocolError):
        helo(name)


def test_mail_from_plain() -> None:
    assert mail_from("alice@example.com") == b"MAIL FROM:<alice@example.com>\r\n"
    assert mail_from("") == b"MAIL FROM:<>\r\n"


def test_mail_from_all_parameters() -> None:
    line = mail_from(
        "alice@example.com",
        size=12345,
        body="8bitmime",
        smtputf8=True,
        ret="hdrs",
        envid="QQ314159 a+b=c",
    )
    assert line == (
        b"MAIL FROM:<alice@example.com> SIZE=12345 BODY=8BITMIME SMTPUTF8 RET=HDRS "
        b"ENVID=QQ314159+20a+2Bb+3Dc\r\n"
    )


def test_mail_from_each_parameter() -> None:
    assert mail_from("a@b", size=0) == b"MAIL FROM:<a@b> SIZE=0\r\n"
    assert mail_from("a@b", body="7BIT") == b"MAIL FROM:<a@b> BODY=7BIT\r\n"
    assert mail_from("a@b", body="BINARYMIME") == b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n"
    assert mail_from("a@b", smtputf8=True) == b"MAIL FROM:<a@b> SMTPUTF8\r\n"
    assert mail_from("a@b", ret="FULL") == b"MAIL FROM:<a@b> RET=FULL\r\n"
    assert mail_from("", envid="x") == b"MAIL FROM:<> ENVID=x\r\n"


def test_mail_from_utf8() -> None:
    assert mail_from("j\u00f6rg@b\u00fccher.example", smtputf8=True) == (
        "MAIL FROM:<j\u00f6rg@b\u00fccher.example> SMTPUTF8\r\n".encode()
    )
    with pytest.raises(LocalProtocolError, match="SMTPUTF8"):
        mail_from("j\u00f6rg@example.com")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": -1},
        {"size": True},
        {"size": 1.5},
        {"size": "10"},
        {"body": "8BIT"},
        {"body": "8BITMIME\r\nRSET"},
        {"ret": "ALL"},
        {"envid": ""},
        {"envid": "caf\u00e9"},
        {"envid": "a\tb"},
    ],
)
def test_mail_from_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        mail_from("a@b", **kwargs)  # type: ignore[arg-type]


def test_rcpt_to() -> None:
    assert rcpt_to("bob@example.org") == b"RCPT TO:<bob@example.org>\r\n"
    assert rcpt_to("Postmaster") == b"RCPT TO:<Postmaster>\r\n"
    assert rcpt_to("\u7528\u6237@\u4f8b\u5b50.\u4e2d\u56fd", smtputf8=True) == (
        "RCPT TO:<\u7528\u6237@\u4f8b\u5b50.\u4e2d\u56fd>\r\n".encode()
    )


def test_rcpt_to_dsn() -> None:
    assert rcpt_to("b@x", notify=["never"]) == b"RCPT TO:<b@x> NOTIFY=NEVER\r\n"
    assert rcpt_to("b@x", notify=["DELAY", "failure", "SUCCESS", "DELAY"]) == (
        b"RCPT TO:<b@x> NOTIFY=SUCCESS,FAILURE,DELAY\r\n"
    )
    assert rcpt_to("b@x", notify="FAILURE,DELAY") == b"RCPT TO:<b@x> NOTIFY=FAILURE,DELAY\r\n"
    assert rcpt_to("b@x", orcpt="b+tag@x") == b"RCPT TO:<b@x> ORCPT=rfc822;b+2Btag@x\r\n"
    assert rcpt_to("b@x", notify=("FAILURE",), orcpt="b@x") == (
        b"RCPT TO:<b@x> NOTIFY=FAILURE ORCPT=rfc822;b@x\r\n"
    )


def test_rcpt_to_utf8_orcpt() -> None:
    # RFC 6533: "utf-8" address type, \x{HEX} escapes unless SMTPUTF8 is in use.
    assert rcpt_to("b@x", orcpt="j\u00f6rg+1@x") == (
        b"RCPT TO:<b@x> ORCPT=utf-8;j\\x{F6}rg\\x{2B}1@x\r\n"
    )
    assert rcpt_to("b@x", smtputf8=True, orcpt="j\u00f6rg@x") == (
        "RCPT TO:<b@x> ORCPT=utf-8;j\u00f6rg@x\r\n".encode()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"notify": []},
        {"notify": ["NEVER", "FAILURE"]},
        {"notify": ["SOMETIMES"]},
        {"notify": ["FAILURE\r\n"]},
        {"orcpt": ""},
        {"orcpt": "a\x00@b"},
    ],
)
def test_rcpt_to_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        rcpt_to("a@b", **kwargs)  # type: ignore[arg-type]


def test_rcpt_to_refuses_empty() -> None:
    with pytest.raises(LocalProtocolError, match="empty"):
        rcpt_to("")


def test_bdat() -> None:
    assert bdat(123, last=True) == b"BDAT 123 LAST\r\n"
    assert bdat(65536, last=False) == b"BDAT 65536\r\n"
    assert bdat(0, last=True) == b"BDAT 0 LAST\r\n"
    for bad in (-1, True, 1.0):
        with pytest.raises(LocalProtocolError):
            bdat(bad, last=True)  # type: ignore[arg-type]


def test_auth() -> None:
    assert auth("LOGIN") == b"AUTH LOGIN\r\n"
    assert auth("plain", b"\x00tim\x00tanstaaf") == b"AUTH PLAIN AHRpbQB0YW5zdGFhZg==\r\n"
    assert auth("EXTERNAL", b"") == b"AUTH EXTERNAL =\r\n"
    assert auth("CRAM-MD5") == b"AUTH CRAM-MD5\r\n"
    for bad in ("", "PLAIN LOGIN", "X" * 21, "PL\u00c4IN", "PLAIN\r\n", "a.b"):
        with pytest.raises(LocalProtocolError):
            auth(bad)


def test_auth_continue() -> None:
    assert auth_continue(b"tim") == b"dGlt\r\n"
    assert auth_continue(b"") == b"\r\n"
    assert auth_continue(b"\r\n\x00") == b"DQoA\r\n"


# --- addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "a@b",
        "first.last+tag@sub.example.com",
        '"john doe"@example.com',
        '"a\\"b"@example.com',
        '"a@b"@example.com',
        "user@[192.0.2.1]",
        "user@[IPv6:2001:db8::1]",
        "postmaster",
        "POSTMASTER",
        "x" * 64 + "@" + "d" * 189,  # 254 octets
    ],
)
def test_valid_addresses(address: str) -> None:
    assert validate_address(address) is address


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "empty"),
        ("a@b\r\nRCPT TO:<evil@x>", "line break"),
        ("a\n@b", "line break"),
        ("a\x00@b", "NUL"),
        ("a\x7f@b", "control"),
        ("a\t@b", "control"),
        ("a\x85@b", "line break"),
        ("a@b\u2028", "line break"),
        ("a@b\u00a0c", "space"),
        ("a b@c", "space"),
        ("a@b c", "space"),
        ('"a b"@c d', "space"),
        ("<a@b>", "'<'"),
        ("a@b>", "'>'"),
        ("ab", "no '@'"),
        ("postmaster2", "no '@'"),
        ("@b", "empty local part"),
        ("a@", "empty domain"),
        ("a@b@c", "more than one '@'"),
        ('"ab@c', "quoted"),
        ('"a"b@c', "quoted"),
        ('"a"b"@c', "unescaped"),
        ('"a\\"@c', "backslash"),
        ("x" * 65 + "@b", "local part of 65 octets"),
        ("x" * 64 + "@" + "d" * 190, "255 octets"),
        ("a@[192.0.2.1", "address literal"),
        ("a@[]", "address literal"),
        ("j\u00f6rg@example.com", "SMTPUTF8"),
    ],
)
def test_invalid_addresses(address: str, problem: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        validate_address(address)
    assert problem in str(info.value)
    if address:
        assert repr(address) in str(info.value)


def test_empty_sender_allowed_only_when_asked() -> None:
    assert validate_address("", allow_empty=True) == ""
    with pytest.raises(LocalProtocolError):
        validate_address("")


def test_smtputf8_addresses() -> None:
    assert validate_address("j\u00f6rg@b\u00fccher.example", smtputf8=True)
    # Octets, not characters, count towards the limits.
    with pytest.raises(LocalProtocolError, match="local part of 66 octets"):
        validate_address("\u00e9" * 33 + "@x", smtputf8=True)
    # Still no controls, surrogates or exotic spaces.
    for bad in ("j\u00f6rg\r\n@x", "a\u3000b@x", "a\ud800@x"):
        with pytest.raises(LocalProtocolError):
            validate_address(bad, smtputf8=True)


def test_error_message_is_bounded() -> None:
    with pytest.raises(LocalProtocolError) as info:
        validate_address("x" * 100_000)
    assert len(str(info.value)) < 500


# --- xtext ---------------------------------------------------------------------------


def test_xtext() -> None:
    assert xtext("abc") == "abc"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("\r\n") == "+0D+0A"
    assert xtext("\u00e9") == "+C3+A9"
    assert xtext("") == ""


def test_xtext_decode_rejects_invalid() -> None:
    for bad in ("a b", "+2", "+2b", "a=b", "+ZZ", "+FF", "\u00e9"):
        with pytest.raises(RemoteProtocolError):
            xtext_decode(bad)


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_xtext_round_trip(value: str) -> None:
    encoded = xtext(value)
    assert encoded.isascii()
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert xtext_decode(encoded) == value


# --- injection properties ------------------------------------------------------------

BUILDERS: list[Callable[[str], bytes]] = [
    ehlo,
    helo,
    mail_from,
    lambda s: mail_from(s, smtputf8=True),
    lambda s: mail_from("a@b", envid=s),
    lambda s: mail_from("a@b", body=s),
    lambda s: mail_from("a@b", ret=s),
    rcpt_to,
    lambda s: rcpt_to(s, smtputf8=True),
    lambda s: rcpt_to("a@b", orcpt=s),
    lambda s: rcpt_to("a@b", orcpt=s, smtputf8=True),
    lambda s: rcpt_to("a@b", notify=[s]),
    auth,
    lambda s: auth(s, b"x"),
]

_any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
_bad_text = st.tuples(_any_text, st.sampled_from(["\r", "\n", "\x00", "\r\n"]), _any_text).map(
    "".join
)
_plausible_text = st.one_of(
    _any_text,
    st.from_regex(r"[a-zA-Z0-9._+\-]{1,20}@[a-z0-9.\-]{1,20}", fullmatch=True),
    st.sampled_from(["PLAIN", "NEVER", "FULL", "8BITMIME", "host.example"]),
)


@pytest.mark.parametrize("build", BUILDERS)
@given(value=_bad_text)
def test_cr_lf_nul_always_refused(build: Callable[[str], bytes], value: str) -> None:
    with pytest.raises(LocalProtocolError):
        build(value)


@pytest.mark.parametrize("build", BUILDERS)
@given(value=_plausible_text)
def test_accepted_input_gives_one_line(build: Callable[[str], bytes], value: str) -> None:
    try:
        line = build(value)
    except LocalProtocolError:
        return
    assert line.endswith(b"\r\n")
    assert line.count(b"\r") == 1 and line.count(b"\n") == 1
    assert b"\x00" not in line


@given(value=_any_text, first=st.booleans())
def test_mail_from_never_embeds_unvalidated_sender(value: str, first: bool) -> None:
    try:
        line = mail_from(value, smtputf8=first)
    except LocalProtocolError:
        return
    assert line.startswith(b"MAIL FROM:<") and line.endswith(b">\r\n" if not first else b"\r\n")
    assert line.count(b"\r\n") == 1
