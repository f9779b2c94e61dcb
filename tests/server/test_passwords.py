"""scrypt password hashes for submission users, and the command that makes them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mxpress.errors import ConfigError
from mxpress.security.passwords import (
    DEFAULT_N,
    hash_password,
    parse_hash,
    verify_password,
)


def test_default_hash_round_trip() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith(f"scrypt$n={DEFAULT_N},r=8,p=1$")
    assert verify_password("correct horse", stored)
    assert verify_password(b"correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("", stored)


def test_salted_and_self_describing() -> None:
    a, b = hash_password("pw", n=1024), hash_password("pw", n=1024)
    assert a != b  # a fresh salt each time
    parsed = parse_hash(a)
    assert (parsed.n, parsed.r, parsed.p) == (1024, 8, 1)
    assert (len(parsed.salt), len(parsed.hash)) == (16, 32)
    assert parsed.encode() == a
    assert verify_password("pw", parsed) and verify_password("pw", b)


def test_unicode_password_is_utf8() -> None:
    stored = hash_password("pässwörd", n=1024)
    assert verify_password("pässwörd".encode(), stored)
    assert not verify_password("passwort", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "bcrypt$n=1024,r=8,p=1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$n=1000,r=8,p=1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",  # not a power of 2
        "scrypt$n=1048576000,r=8,p=1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",  # too costly
        "scrypt$n=1024,r=8$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",  # p missing
        "scrypt$n=1024,r=8,p=1,x=2$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$n=1024,r=8,p=1$not base64!$AAAAAAAAAAAAAAAAAAAAAA==",
        "scrypt$n=1024,r=8,p=1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==",  # salt too short
    ],
)
def test_malformed_hashes_are_config_errors(stored: str) -> None:
    with pytest.raises(ConfigError, match="password hash"):
        verify_password("pw", stored)


def test_empty_password_and_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="empty"):
        hash_password("")
    with pytest.raises(ConfigError, match="power of two"):
        hash_password("pw", n=1000)


def test_command_line_reads_stdin_and_prints_a_hash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mxpress.security.passwords"],
        input="from stdin\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stderr == ""
    assert verify_password("from stdin", done.stdout.strip())
    empty = subprocess.run(
        [sys.executable, "-m", "mxpress.security.passwords"],
        input="\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert empty.returncode == 1 and "empty" in empty.stderr
