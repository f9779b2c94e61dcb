"""The lab's test CA: make_test_ca() writes a trustme CA and a server certificate as PEM
files; TestCA also gives ready client and server SSL contexts."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["DEFAULT_CERT_NAMES", "TestCA", "make_test_ca"]

DEFAULT_CERT_NAMES = ("localhost", "127.0.0.1", "mx1.test", "mx2.test", "smtp.test")


@dataclass(frozen=True)
class TestCA:
    """A trustme CA and one server certificate, written out as PEM files."""

    __test__ = False  # not a pytest test class, despite the name

    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_pem: Path  # give this to clients as cafile
    cert_pem: Path  # server certificate chain (leaf first)
    key_pem: Path  # server private key
    combined_pem: Path  # key + chain in one file
    names: tuple[str, ...]

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the server certificate (for aiosmtpd)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx


def make_test_ca(
    workdir: str | os.PathLike[str],
    names: Iterable[str] = DEFAULT_CERT_NAMES,
    *,
    extra_names: Iterable[str] = (),
) -> TestCA:
    """Make a CA and a server cert for `names` (+ `extra_names`); write PEMs into `workdir`.

    Files: ca.pem, server-cert.pem (chain), server-key.pem (0600), server.pem (key + chain)."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    all_names = tuple(dict.fromkeys([*names, *extra_names]))
    ca = trustme.CA(organization_name="mxpress lab CA")
    leaf = ca.issue_cert(*all_names)
    ca_pem, cert_pem, key_pem, combined = (
        wd / "ca.pem",
        wd / "server-cert.pem",
        wd / "server-key.pem",
        wd / "server.pem",
    )
    ca.cert_pem.write_to_path(str(ca_pem))
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    cert_pem.write_bytes(chain)
    key_pem.write_bytes(leaf.private_key_pem.bytes())
    combined.write_bytes(leaf.private_key_pem.bytes() + chain)
    key_pem.chmod(0o600)
    combined.chmod(0o600)
    return TestCA(ca, leaf, ca_pem, cert_pem, key_pem, combined, all_names)
