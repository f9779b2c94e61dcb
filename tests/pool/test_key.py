"""DestinationKey: what makes two sessions shareable, and that it never shows secrets."""

from __future__ import annotations

from mxpress.client.session import TLSMode
from mxpress.client.timeouts import Timeouts
from mxpress.pool import DestinationKey
from tests.pool.conftest import opts

SECRET = "hunter2-correct-horse"


def key(**kw: object) -> DestinationKey:
    return DestinationKey.from_options(opts(**kw))  # type: ignore[arg-type]


def test_equal_options_give_equal_keys_and_host_case_is_ignored() -> None:
    assert key(host="MX1.Test.") == key(host="mx1.test")
    assert hash(key(username="a", password="p")) == hash(key(username="a", password="p"))


def test_timeouts_do_not_split_pools() -> None:
    assert key(timeouts=Timeouts.uniform(5)) == key()


def test_every_identity_field_splits_pools() -> None:
    base = key(username="alice", password="pw")
    variants = [
        key(host="mx2.test", username="alice", password="pw"),
        key(port=587, username="alice", password="pw"),
        key(tls=TLSMode.REQUIRED, username="alice", password="pw"),
        key(verify=False, username="alice", password="pw"),
        key(cafile="/etc/ca.pem", username="alice", password="pw"),
        key(server_hostname="other.test", username="alice", password="pw"),
        key(username="bob", password="pw"),
        key(username="alice", password="other"),
        key(username="alice", password="pw", auth_mechanism="LOGIN"),
        key(username="alice", password="pw", source_address="127.0.0.5"),
        key(username="alice", password="pw", local_hostname="me.test"),
    ]
    assert all(v != base for v in variants)
    assert len(set(variants)) == len(variants)


def test_key_never_shows_the_password_or_its_digest() -> None:
    k = key(username="alice", password=SECRET)
    assert k.password_fingerprint is not None
    assert SECRET not in repr(k) and SECRET not in str(k) and SECRET not in k.name
    assert k.password_fingerprint not in repr(k)
    assert k.password_fingerprint not in k.name


def test_name_is_host_port_tls_user() -> None:
    assert key(username="alice", password="x").name == "mx1.test:25 none alice"
    assert key(host="::1", port=2525).name == "[::1]:2525 none"
    assert key(verify=False, source_address="127.0.0.9").name == (
        "mx1.test:25 none noverify from=127.0.0.9"
    )
