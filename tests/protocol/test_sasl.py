from __future__ import annotations

import pytest

from mxpress.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from mxpress.protocol.commands import auth
from mxpress.protocol.sasl import (
    CramMD5,
    Login,
    Mechanism,
    Plain,
    XOAuth2,
    choose_mechanism,
)


def test_plain() -> None:
    mech: Mechanism = Plain("tim", "tanstaaf")
    assert mech.name == "PLAIN"
    assert mech.initial_response() == b"\x00tim\x00tanstaaf"
    assert auth(mech.name, mech.initial_response()) == b"AUTH PLAIN AHRpbQB0YW5zdGFhZg==\r\n"


def test_plain_without_initial_response() -> None:
    mech = Plain("tim", "p\u00e4ss\r\nword")
    assert mech.respond(b"") == "\x00tim\x00p\u00e4ss\r\nword".encode()
    with pytest.raises(RemoteProtocolError):
        mech.respond(b"")


@pytest.mark.parametrize(("user", "password"), [("a\x00b", "x"), ("a", "x\x00")])
def test_plain_refuses_nul(user: str, password: str) -> None:
    with pytest.raises(LocalProtocolError, match="NUL"):
        Plain(user, password)


def test_login() -> None:
    mech: Mechanism = Login("tim", "secret")
    assert mech.name == "LOGIN"
    assert mech.initial_response() is None
    assert mech.respond(b"Username:") == b"tim"
    assert mech.respond(b"Password:") == b"secret"
    with pytest.raises(RemoteProtocolError):
        mech.respond(b"Password:")


def test_login_prompts_case_insensitive_and_out_of_order() -> None:
    mech = Login("tim", "secret")
    assert mech.respond(b"PASSWORD:") == b"secret"
    assert mech.respond(b"user name:") == b"tim"


def test_login_unusual_prompts_go_by_step() -> None:
    mech = Login("tim", "secret")
    assert mech.respond(b"Identify yourself") == b"tim"
    assert mech.respond(b"\x00\x01") == b"secret"
    with pytest.raises(RemoteProtocolError):
        mech.respond(b"more?")


def test_cram_md5_rfc2195_example() -> None:
    mech: Mechanism = CramMD5("tim", "tanstaaftanstaaf")
    assert mech.name == "CRAM-MD5"
    assert mech.initial_response() is None
    response = mech.respond(b"<1896.697170952@postoffice.reston.mci.net>")
    assert response == b"tim b913a602c7eda7a495b4e6e7334d3890"
    with pytest.raises(RemoteProtocolError):
        mech.respond(b"<again@x>")


def test_cram_md5_empty_challenge() -> None:
    with pytest.raises(RemoteProtocolError):
        CramMD5("tim", "x").respond(b"")


def test_xoauth2() -> None:
    mech: Mechanism = XOAuth2(
        "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    )
    assert mech.name == "XOAUTH2"
    assert mech.initial_response() == (
        b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
        b"\x01\x01"
    )
    # A 334 carrying the JSON error is acknowledged with an empty response.
    assert (
        mech.respond(b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        == b""
    )


def test_xoauth2_without_initial_response() -> None:
    mech = XOAuth2("u", "t")
    assert mech.respond(b"") == b"user=u\x01auth=Bearer t\x01\x01"
    assert mech.respond(b'{"status":"400"}') == b""


def test_xoauth2_refuses_separator() -> None:
    with pytest.raises(LocalProtocolError):
        XOAuth2("u\x01", "t")


# --- choose_mechanism ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ({"PLAIN", "LOGIN", "CRAM-MD5"}, Plain),
        ({"LOGIN", "CRAM-MD5"}, Login),
        ({"CRAM-MD5", "GSSAPI"}, CramMD5),
        ({"LOGIN", "XOAUTH2"}, Login),
    ],
)
def test_choose_by_preference(offered: set[str], expected: type) -> None:
    assert isinstance(choose_mechanism(frozenset(offered), "u", "p"), expected)


def test_choose_forced() -> None:
    offered = frozenset({"PLAIN", "XOAUTH2"})
    mech = choose_mechanism(offered, "u", "token", mechanism="xoauth2")
    assert isinstance(mech, XOAuth2)
    assert mech.initial_response() == b"user=u\x01auth=Bearer token\x01\x01"
    assert isinstance(choose_mechanism(offered, "u", "p", mechanism="PLAIN"), Plain)


def test_choose_forced_not_offered() -> None:
    with pytest.raises(AuthenticationError, match="does not offer the XOAUTH2") as info:
        choose_mechanism(frozenset({"PLAIN", "LOGIN"}), "u", "t", mechanism="XOAUTH2")
    assert "LOGIN, PLAIN" in str(info.value)


def test_choose_forced_unknown() -> None:
    with pytest.raises(AuthenticationError, match="not supported by mxpress"):
        choose_mechanism(frozenset({"GSSAPI"}), "u", "t", mechanism="GSSAPI")


def test_choose_nothing_fits() -> None:
    with pytest.raises(AuthenticationError) as info:
        choose_mechanism(frozenset({"NTLM", "GSSAPI", "XOAUTH2"}), "u", "p")
    message = str(info.value)
    assert "GSSAPI, NTLM, XOAUTH2" in message
    assert "PLAIN" in message


def test_choose_no_auth_offered() -> None:
    with pytest.raises(AuthenticationError, match="no AUTH"):
        choose_mechanism(frozenset(), "u", "p")
