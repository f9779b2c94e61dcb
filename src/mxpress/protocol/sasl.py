"""SASL client mechanisms for SMTP AUTH (RFC 4954) as pure challenge → response steps.

The caller sends `commands.auth(m.name, m.initial_response())`, then for every 334
reply base64-decodes the challenge, calls `m.respond(challenge)` and sends
`commands.auth_continue(response)`, until a 235 (success) or an error reply.
Text is encoded as UTF-8 (no SASLprep).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from mxpress.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError


class Mechanism(Protocol):
    name: str

    def initial_response(self) -> bytes | None:
        """Bytes to send with AUTH (RFC 4954 initial response), or None to wait for 334."""
        ...

    def respond(self, challenge: bytes) -> bytes:
        """Answer one base64-decoded 334 challenge with raw (not yet base64) bytes."""
        ...


def _unexpected(name: str, challenge: bytes) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"unexpected extra {name} challenge {challenge[:80]!r} after all credentials were sent"
    )


class Plain:
    """PLAIN (RFC 4616): one message "\\0user\\0password", sent with AUTH (1 round trip)."""

    __slots__ = ("_message", "_sent")
    name = "PLAIN"

    def __init__(self, username: str, password: str) -> None:
        if "\x00" in username or "\x00" in password:
            raise LocalProtocolError(
                "PLAIN cannot carry a username or password containing a NUL character"
            )
        self._message = b"\x00" + username.encode() + b"\x00" + password.encode()
        self._sent = False

    def initial_response(self) -> bytes | None:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        # Reached when the caller did not send the initial response: the server then
        # asks with an empty 334. Answer once; a second challenge is a server bug.
        if self._sent:
            raise _unexpected(self.name, challenge)
        self._sent = True
        return self._message


class Login:
    """LOGIN (draft-murchison-sasl-login): username, then password, each on request."""

    __slots__ = ("_password", "_sent_password", "_sent_username", "_username")
    name = "LOGIN"

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()
        self._sent_username = False
        self._sent_password = False

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        prompt = challenge.lower()
        # Trust the prompt text when it is the usual one; otherwise go by step order.
        if b"pass" in prompt:
            want_password = True
        elif b"user" in prompt:
            want_password = False
        else:
            want_password = self._sent_username
        if want_password:
            if self._sent_password:
                raise _unexpected(self.name, challenge)
            self._sent_password = True
            return self._password
        if self._sent_username:
            raise _unexpected(self.name, challenge)
        self._sent_username = True
        return self._username


class CramMD5:
    """CRAM-MD5 (RFC 2195): "user hex(HMAC-MD5(password, challenge))"."""

    __slots__ = ("_password", "_sent", "_username")
    name = "CRAM-MD5"

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()
        self._sent = False

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        if self._sent:
            raise _unexpected(self.name, challenge)
        if not challenge:
            raise RemoteProtocolError("CRAM-MD5 challenge is empty")
        self._sent = True
        digest = hmac.new(self._password, challenge, "md5").hexdigest()
        return self._username + b" " + digest.encode("ascii")


class XOAuth2:
    """XOAUTH2 (Google, Microsoft): "user=U\\x01auth=Bearer T\\x01\\x01" sent with AUTH.

    On failure the server sends a 334 with a JSON error; the client must answer with an
    empty line and then reads the final error reply.
    """

    __slots__ = ("_message", "_sent")
    name = "XOAUTH2"

    def __init__(self, username: str, token: str) -> None:
        if "\x01" in username or "\x01" in token:
            raise LocalProtocolError(
                "XOAUTH2 cannot carry a username or token containing a \\x01 character"
            )
        self._message = f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
        self._sent = False

    def initial_response(self) -> bytes | None:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        # Without an initial response the server asks with an empty challenge; a
        # non-empty one is the JSON error, which is acknowledged with an empty response.
        if not challenge and not self._sent:
            self._sent = True
            return self._message
        return b""


_MECHANISMS: Mapping[str, Callable[[str, str], Mechanism]] = MappingProxyType(
    {"PLAIN": Plain, "LOGIN": Login, "CRAM-MD5": CramMD5, "XOAUTH2": XOAuth2}
)
# With a password: PLAIN (and LOGIN) cost one round trip less than CRAM-MD5, and AUTH is
# only ever sent over TLS; CRAM-MD5 is the fallback for servers that offer only it.
_PASSWORD_PREFERENCE = ("PLAIN", "LOGIN", "CRAM-MD5")


def choose_mechanism(
    offered: frozenset[str], username: str, secret: str, *, mechanism: str | None = None
) -> Mechanism:
    """Pick the mechanism to log in with among those the server `offered` (upper-case).

    Without `mechanism`, `secret` is a password and PLAIN, LOGIN, CRAM-MD5 are tried in
    that order; `mechanism="XOAUTH2"` (or any supported name) forces one, with `secret`
    as its token. Raises `AuthenticationError` when nothing fits.
    """
    offers = ", ".join(sorted(offered)) if offered else "nothing (no AUTH in its EHLO reply)"
    if mechanism is not None:
        name = mechanism.upper()
        factory = _MECHANISMS.get(name)
        if factory is None:
            raise AuthenticationError(
                f"SASL mechanism {mechanism!r} is not supported by mxpress; "
                f"use one of {', '.join(_MECHANISMS)}"
            )
        if name not in offered:
            raise AuthenticationError(
                f"the server does not offer the {name} mechanism that was asked for; "
                f"it offers {offers}"
            )
        return factory(username, secret)
    for name in _PASSWORD_PREFERENCE:
        if name in offered:
            return _MECHANISMS[name](username, secret)
    raise AuthenticationError(
        f"no SASL mechanism usable with a password: the server offers {offers}; "
        f"mxpress supports {', '.join(_PASSWORD_PREFERENCE)} (and XOAUTH2 with a token, "
        "chosen explicitly)"
    )
