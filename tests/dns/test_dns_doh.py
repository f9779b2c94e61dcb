"""DNS-over-HTTPS against a real DoH server: dnsdist in front of the dnsmasq test zone."""

from __future__ import annotations

from pathlib import Path

import pytest

from mxpress.dns import Resolver
from mxpress.errors import ConfigError, DNSTemporaryError, NullMX
from tests.dns.dns_helpers import Dnsdist
from tests.lab.servers import make_test_ca

pytestmark = pytest.mark.lab


async def test_mx_and_addresses_over_https(doh_server: Dnsdist) -> None:
    resolver = Resolver([doh_server.url], tls_verify=str(doh_server.ca_pem), timeout=3.0)
    route = await resolver.mx("order.test")
    first = route.hosts[0]
    assert (first.preference, first.name) == (10, "mx1.order.test")
    assert {h.name: h.addresses for h in route.hosts}["mx1.order.test"] == [
        "::11",
        "127.0.0.11",
    ]
    with pytest.raises(NullMX):
        await resolver.mx("nullmx.test")
    assert resolver.stats.upstream_queries >= 7


async def test_a_certificate_from_another_ca_is_refused(
    doh_server: Dnsdist, tmp_path: Path
) -> None:
    stranger = make_test_ca(tmp_path / "other")
    resolver = Resolver([doh_server.url], tls_verify=str(stranger.ca_pem), timeout=2.0, attempts=1)
    with pytest.raises(DNSTemporaryError) as caught:
        await resolver.mx("order.test")
    # The cause, not only the timeout that dnspython's retries end in.
    assert "certificate verify failed" in str(caught.value), caught.value
    assert doh_server.url in str(caught.value)


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the CA certificates"):
        Resolver(["https://127.0.0.1:1/dns-query"], tls_verify=str(tmp_path / "none.pem"))
