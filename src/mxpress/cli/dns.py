"""`mxpress dns ...`: MX lookups and a resolver benchmark from the command line.

Exit codes of `dns mx`: 0 found, 1 permanent failure (NXDOMAIN, null MX, no
mail host), 75 temporary failure (EX_TEMPFAIL: SERVFAIL, timeout), 2 usage.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mxpress.dns.bench import read_domains, run_bench
from mxpress.dns.mx import MXRoute
from mxpress.dns.resolver import Resolver
from mxpress.errors import ConfigError, DNSError, NullMX

EX_TEMPFAIL = 75


def _ttl(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 3)


def route_json(route: MXRoute, elapsed_ms: float) -> dict[str, Any]:
    return {
        "domain": route.domain,
        "hosts": [
            {
                "host": h.name,
                "preference": h.preference,
                "addresses": h.addresses,
                "ttl": _ttl(h.ttl),
                **({"error": h.error} if h.error else {}),
            }
            for h in route.hosts
        ],
        "implicit": route.implicit,
        "null_mx": route.null_mx,
        "ttl": _ttl(route.ttl),
        "elapsed_ms": round(elapsed_ms, 3),
        "error": None if route.error is None else route.error.message,
    }


def _print_route(console: Console, route: MXRoute, elapsed_ms: float) -> None:
    kind = "implicit MX (no MX records: the domain's own host)" if route.implicit else "MX"
    ttl = _ttl(route.ttl)
    console.print(
        f"[bold]{route.domain}[/bold]  {kind}, {len(route.hosts)} host(s), "
        f"ttl {'-' if ttl is None else f'{ttl:.0f} s'}, {elapsed_ms:.1f} ms"
    )
    table = Table(box=None, show_header=True, pad_edge=False)
    for column in ("pref", "host", "addresses", "ttl"):
        table.add_column(column)
    for h in route.hosts:
        addresses = ", ".join(h.addresses) or f"[red]none[/red] ({h.error})"
        host_ttl = _ttl(h.ttl)
        table.add_row(
            str(h.preference), h.name, addresses, "-" if host_ttl is None else f"{host_ttl:.0f}"
        )
    console.print(table)


@click.group(name="dns")
def dns_group() -> None:
    """DNS tools: MX lookups and a resolver benchmark."""


_nameserver_option = click.option(
    "--nameserver",
    "-n",
    "nameservers",
    multiple=True,
    metavar="IP[:PORT]",
    help="Nameserver to ask (repeatable); also tls://IP[:PORT][#name], https://URL. "
    "Default: the system's.",
)


@dns_group.command(name="mx")
@click.argument("domain")
@_nameserver_option
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds per try.")
@click.option("--attempts", type=int, default=2, show_default=True, help="Rounds of tries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def mx_command(
    domain: str, nameservers: tuple[str, ...], timeout: float, attempts: int, as_json: bool
) -> None:
    """Show the mail route of DOMAIN: MX hosts in delivery order, addresses and TTLs."""
    try:
        resolver = Resolver(
            list(nameservers) or None,
            timeout=timeout,
            lifetime=timeout * attempts * max(1, len(nameservers)),
            attempts=attempts,
        )
    except ConfigError as exc:
        raise click.UsageError(exc.message) from exc

    async def lookup() -> tuple[MXRoute, float]:
        start = time.perf_counter()
        route = await resolver.mx(domain, raise_errors=False)
        return route, (time.perf_counter() - start) * 1000.0

    route, elapsed_ms = asyncio.run(lookup())
    if as_json:
        click.echo(json.dumps(route_json(route, elapsed_ms)))
    elif route.error is None:
        _print_route(_console(), route, elapsed_ms)
    if route.error is not None:
        click.echo(f"mxpress: {_reason(route.error)}", err=True)
        raise SystemExit(EX_TEMPFAIL if route.error.is_transient else 1)


def _reason(error: DNSError) -> str:
    prefix = "null MX: " if isinstance(error, NullMX) else ""
    return prefix + error.message


@dns_group.command(name="bench")
@_nameserver_option
@click.option("--domain", "-d", "domains", multiple=True, help="Domain to look up (repeatable).")
@click.option(
    "--domains",
    "domains_file",
    type=click.Path(exists=True, dir_okay=False),
    help="File of domains, one per line.",
)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds per try.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_command(
    nameservers: tuple[str, ...],
    domains: tuple[str, ...],
    domains_file: str | None,
    rounds: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Compare resolvers: MX lookup latency and loss, cold and through mxpress's cache."""
    names = list(domains) + (read_domains(domains_file) if domains_file else [])
    if not names:
        raise click.UsageError("give at least one --domain D or --domains FILE")
    specs: list[str | None] = list(nameservers) or [None]
    try:
        results = asyncio.run(
            run_bench(specs, names, rounds=rounds, dns_timeout=timeout, lifetime=timeout)
        )
    except ConfigError as exc:
        raise click.UsageError(exc.message) from exc
    rows = [r.summary() for r in results]
    if as_json:
        click.echo(json.dumps({"domains": len(names), "rounds": rounds, "results": rows}))
        return
    table = Table(title=f"MX lookups: {len(names)} domain(s) x {rounds} round(s), times in ms")
    headers = {
        "nameserver": "resolver",
        "mode": "mode",
        "lookups": "lookups",
        "upstream_queries": "queries",
        "failures": "failures",
        "loss_pct": "loss %",
        "min_ms": "min",
        "p50_ms": "p50",
        "p95_ms": "p95",
        "p99_ms": "p99",
        "max_ms": "max",
    }
    for key, header in headers.items():
        table.add_column(header, justify="left" if key in ("nameserver", "mode") else "right")
    for row in rows:
        table.add_row(*(_cell(row[key]) for key in headers))
    _console().print(table)


def _console() -> Console:
    # Not a terminal (a pipe, a file): do not squeeze the output into 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=200)


def _cell(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
