"""Password hashing for the submission users: scrypt from hashlib, no extra dependency.

A stored hash describes itself, so the cost can be raised later without breaking the
hashes already in a config file:

    scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>

Make one for the config file with `python -m mxpress.security.passwords` (reads the
password from stdin, prints the hash). Verifying costs ~50 ms of CPU and 16 MiB of memory
on purpose; async callers run it in a thread (see `server/submission.py`).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass

from mxpress.errors import ConfigError

SCHEME = "scrypt"
# RFC 7914 §2 interactive-login parameters: ~50 ms, 16 MiB.
DEFAULT_N = 16384
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32

# Bounds for parameters read back from a stored hash: a typo in a config file must not
# make every login allocate gigabytes.
_MAX_N = 1 << 20
_MAX_R = 32
_MAX_P = 16


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A parsed stored hash."""

    n: int
    r: int
    p: int
    salt: bytes
    hash: bytes

    def encode(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.hash).decode("ascii")
        return f"{SCHEME}$n={self.n},r={self.r},p={self.p}${salt}${digest}"


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # OpenSSL needs 128*r*(n+p+2) bytes; hashlib's default maxmem (32 MiB) is too small
    # for n above 2**17.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _to_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def hash_password(
    password: str | bytes, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """Hash `password` (str is UTF-8 encoded) with a fresh random salt."""
    secret = _to_bytes(password)
    if not secret:
        raise ConfigError("refusing to hash an empty password")
    _check_params(n, r, p)
    salt = os.urandom(SALT_BYTES)
    return ScryptHash(n, r, p, salt, _scrypt(secret, salt, n, r, p, HASH_BYTES)).encode()


def _check_params(n: int, r: int, p: int) -> None:
    if n < 2 or n > _MAX_N or n & (n - 1):
        raise ConfigError(f"scrypt n={n} must be a power of two between 2 and {_MAX_N}")
    if not 1 <= r <= _MAX_R:
        raise ConfigError(f"scrypt r={r} must be between 1 and {_MAX_R}")
    if not 1 <= p <= _MAX_P:
        raise ConfigError(f"scrypt p={p} must be between 1 and {_MAX_P}")


def parse_hash(stored: str) -> ScryptHash:
    """Parse a stored hash; ConfigError says what is wrong (never echoes the hash)."""
    hint = (
        "expected scrypt$n=16384,r=8,p=1$SALT$HASH (make one: python -m mxpress.security.passwords)"
    )
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ConfigError(f"password hash is not in the scrypt format; {hint}")
    params: dict[str, int] = {}
    for item in parts[1].split(","):
        key, _, value = item.partition("=")
        if key not in ("n", "r", "p") or key in params or not value.isdigit():
            raise ConfigError(f"password hash has bad parameters {parts[1]!r}; {hint}")
        params[key] = int(value)
    if len(params) != 3:
        raise ConfigError(f"password hash misses one of n, r, p; {hint}")
    try:
        _check_params(params["n"], params["r"], params["p"])
    except ConfigError as exc:
        raise ConfigError(f"password hash: {exc}") from None
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except binascii.Error:
        raise ConfigError(f"password hash has invalid base64; {hint}") from None
    if len(salt) < 8 or len(digest) < 16:
        raise ConfigError(f"password hash has a salt or hash that is too short; {hint}")
    return ScryptHash(params["n"], params["r"], params["p"], salt, digest)


def verify_password(password: str | bytes, stored: str | ScryptHash) -> bool:
    """True if `password` matches `stored`. Compares in constant time.

    A malformed `stored` raises ConfigError: it is a broken config, not a wrong password.
    """
    parsed = stored if isinstance(stored, ScryptHash) else parse_hash(stored)
    candidate = _scrypt(
        _to_bytes(password), parsed.salt, parsed.n, parsed.r, parsed.p, len(parsed.hash)
    )
    return hmac.compare_digest(candidate, parsed.hash)


def main(argv: list[str] | None = None) -> int:
    """`python -m mxpress.security.passwords`: password on stdin (or prompt) -> hash."""
    del argv  # no options: the password never goes on the command line (ps, history)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(hash_password(password))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
