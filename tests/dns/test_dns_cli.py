"""`mxpress dns mx` and `mxpress dns bench`, run through click against dnsmasq."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mxpress.cli.dns import EX_TEMPFAIL, dns_group
from tests.dns.dns_helpers import Dnsmasq, free_port

pytestmark = pytest.mark.lab


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(dns_group, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_mx_text(dnsmasq: Dnsmasq) -> None:
    code, out, _ = run("mx", "order.test", "--nameserver", dnsmasq.address)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("order.test  MX, 3 host(s), ttl ")
    assert lines[0].endswith(" ms")
    assert "mx1.order.test" in lines[2] and "::11, 127.0.0.11" in lines[2]
    assert lines[2].split()[0] == "10" and lines[3].split()[0] == "20"


def test_mx_json(dnsmasq: Dnsmasq) -> None:
    code, out, _ = run("mx", "Bücher.test", "-n", dnsmasq.address, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["domain"] == "xn--bcher-kva.test"
    assert data["hosts"] == [
        {
            "host": "mx1.order.test",
            "preference": 5,
            "addresses": ["::11", "127.0.0.11"],
            "ttl": 40.0,
        }
    ]
    assert (data["implicit"], data["null_mx"], data["error"]) == (False, False, None)
    assert data["elapsed_ms"] > 0


def test_mx_implicit_flagged(dnsmasq: Dnsmasq) -> None:
    code, out, _ = run("mx", "implicit.test", "-n", dnsmasq.address)
    assert code == 0 and "implicit MX" in out
    code, out, _ = run("mx", "implicit.test", "-n", dnsmasq.address, "--json")
    assert json.loads(out)["implicit"] is True


@pytest.mark.parametrize(
    ("domain", "reason", "null_mx"),
    [
        ("nullmx.test", "null MX: domain nullmx.test publishes a null MX (RFC 7505)", True),
        ("nope.test", "domain nope.test does not exist (NXDOMAIN)", False),
        ("nodata.test", "domain nodata.test has no MX and no A/AAAA records", False),
    ],
)
def test_mx_permanent_failures(dnsmasq: Dnsmasq, domain: str, reason: str, null_mx: bool) -> None:
    code, out, err = run("mx", domain, "-n", dnsmasq.address)
    assert code == 1 and out == ""
    assert err.startswith(f"mxpress: {reason}") and err.count("\n") == 1
    code, out, _ = run("mx", domain, "-n", dnsmasq.address, "--json")
    data = json.loads(out)
    assert code == 1 and data["null_mx"] is null_mx and data["hosts"] == []
    assert reason.removeprefix("null MX: ") in data["error"]


def test_mx_temporary_failure_exit_code() -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, out, err = run("mx", "order.test", "-n", dead, "--timeout", "0.1", "--attempts", "1")
    assert code == EX_TEMPFAIL
    assert "MX lookup for order.test failed" in err and "try again later" in err
    code, out, _ = run("mx", "order.test", "-n", dead, "--timeout", "0.1", "--json")
    assert code == EX_TEMPFAIL and "try again later" in json.loads(out)["error"]


def test_bad_nameserver_is_a_usage_error() -> None:
    code, _, err = run("mx", "order.test", "-n", "dns.example")
    assert code == 2 and "not an IP address" in err


def test_bench_json(dnsmasq: Dnsmasq, dnsmasq_auth: Dnsmasq, tmp_path: Path) -> None:
    domains = tmp_path / "domains.txt"
    domains.write_text("# test domains\norder.test\n\nnope.test  # NXDOMAIN is an answer\n")
    code, out, _ = run(
        "bench",
        "-n",
        dnsmasq.address,
        "-n",
        dnsmasq_auth.address,
        "--domains",
        str(domains),
        "--domain",
        "implicit.test",
        "--rounds",
        "2",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert (data["domains"], data["rounds"]) == (3, 2)
    rows = {(r["nameserver"], r["mode"]): r for r in data["results"]}
    assert set(rows) == {
        (ns.address, mode) for ns in (dnsmasq, dnsmasq_auth) for mode in ("cold", "cached")
    }
    for row in rows.values():
        assert row["lookups"] == 6 and row["failures"] == 0 and row["loss_pct"] == 0
        assert row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    cold, cached = rows[(dnsmasq.address, "cold")], rows[(dnsmasq.address, "cached")]
    # cold asks upstream every time; through the cache only the first round does
    assert cold["upstream_queries"] == 2 * cached["upstream_queries"]


def test_bench_table_and_loss(dnsmasq: Dnsmasq) -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, out, _ = run(
        "bench", "-n", dnsmasq.address, "-n", dead, "-d", "order.test", "--rounds", "1",
        "--timeout", "0.1",
    )  # fmt: skip
    assert code == 0
    header = next(line for line in out.splitlines() if "resolver" in line)
    columns = [cell.strip() for cell in header.split("┃")[1:-1]]
    assert columns == [
        *("resolver", "mode", "lookups", "queries", "failures", "loss %"),
        *("min", "p50", "p95", "p99", "max"),
    ]
    row = next(line for line in out.splitlines() if dead in line and "cold" in line)
    assert "100.00" in row  # every lookup to the dead server is lost


def test_bench_needs_domains(dnsmasq: Dnsmasq) -> None:
    code, _, err = run("bench", "-n", dnsmasq.address)
    assert code == 2 and "--domain" in err
