"""`DestinationKey`: which sessions may be shared.

Two callers may share a pooled session only if everything that shaped its setup is the
same: where it goes, how TLS was negotiated and checked, who it authenticated as, and which
local address and EHLO name it used. The password is kept only as a short fingerprint, so
the key (and anything that prints it) never holds the secret.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from mxpress.client.session import SessionOptions, TLSMode


def password_fingerprint(password: str | None) -> str | None:
    """A short SHA-256 digest: tells passwords apart without keeping them."""
    if password is None:
        return None
    return hashlib.sha256(password.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DestinationKey:
    """Identity of a pool: sessions are reused only between equal keys.

    Timeouts are deliberately not part of it (they do not change what the server saw; a
    reused session keeps the timeouts it was opened with).
    """

    host: str
    port: int
    tls: TLSMode
    verify: bool
    cafile: str | None
    server_hostname: str | None
    username: str | None
    # Even a digest of a weak password can be brute-forced: keep it out of repr.
    password_fingerprint: str | None = field(repr=False)
    auth_mechanism: str | None
    allow_plaintext_auth: bool
    local_hostname: str | None
    source_address: str | None

    @classmethod
    def from_options(cls, options: SessionOptions) -> DestinationKey:
        return cls(
            # Host names are case-insensitive and may carry the root dot.
            host=options.host.lower().rstrip(".") or options.host,
            port=options.port,
            tls=options.tls,
            verify=options.verify,
            cafile=options.cafile,
            server_hostname=options.server_hostname,
            username=options.username,
            password_fingerprint=password_fingerprint(options.password),
            auth_mechanism=options.auth_mechanism.upper() if options.auth_mechanism else None,
            allow_plaintext_auth=options.allow_plaintext_auth,
            local_hostname=options.local_hostname,
            source_address=options.source_address,
        )

    @property
    def address(self) -> str:
        """`host:port` (brackets around an IPv6 literal)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def name(self) -> str:
        """A printable, secret-free name: "host:port tls [user] [details]"."""
        parts = [self.address, self.tls.value]
        if self.username is not None:
            parts.append(self.username)
        if self.server_hostname is not None:
            parts.append(f"sni={self.server_hostname}")
        if not self.verify:
            parts.append("noverify")
        if self.source_address is not None:
            parts.append(f"from={self.source_address}")
        return " ".join(parts)

    def __str__(self) -> str:
        return self.name
