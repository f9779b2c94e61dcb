"""`mxpress trace`: where every millisecond of a delivery attempt goes, as a waterfall."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mxpress import app
from mxpress.cli.options import connection_options
from mxpress.cli.send import parse_server
from mxpress.client.session import TLSMode
from mxpress.errors import MxpressError
from mxpress.observe.trace import (
    OUTCOMES,
    SETUP_PHASES,
    Trace,
    bar,
    compare,
    setup_ms,
    title,
    to_json,
    verdict,
)
from mxpress.observe.tracer import TraceRequest, run_trace

_BAR_WIDTH = 32


def _fail(reason: object, code: int = 1) -> None:
    click.echo(f"mxpress trace: {reason}", err=True)
    sys.exit(code)


def _exit_code(traces: list[Trace]) -> int:
    """0: every run went through; 2: a recipient or the sender was refused; 1: failed."""
    if any(t.outcome == "failed" for t in traces):
        return 1
    return 0 if all(t.ok for t in traces) else 2


def _waterfall(trace: Trace) -> Table:
    table = Table("phase", "ms", "waterfall", "detail", box=None, pad_edge=False)
    table.columns[1].justify = "right"
    table.columns[2].no_wrap = True
    table.columns[2].min_width = _BAR_WIDTH
    for phase in trace.phases:
        offset, length = bar(phase, trace.total_ms, _BAR_WIDTH)
        style = "red" if not phase.ok else "green" if phase.cache == "hit" else "cyan"
        if phase.name in SETUP_PHASES and phase.ok:
            style = "yellow"
        waterfall = Text(" " * offset) + Text("█" * length, style=style)
        detail = phase.detail
        if not phase.ok and phase.host:
            detail = f"{phase.host}: {detail}"
        table.add_row(
            Text(title(phase.name), style="red" if not phase.ok else ""),
            f"{phase.duration_ms:.2f}",
            waterfall,
            detail,
        )
    table.add_row(Text("total", style="bold"), f"{trace.total_ms:.2f}", "", "")
    return table


def _print_trace(console: Console, trace: Trace) -> None:
    session = f" · {trace.session} session" if trace.session else ""
    console.print(
        f"[bold]run {trace.run}[/] · {trace.mode} {trace.target} · {trace.total_ms:.2f} ms{session}"
    )
    if trace.mx:
        hosts = ", ".join(
            f"{h['preference']} {h['host']} ({', '.join(h['addresses']) or 'no address'})"
            for h in trace.mx
        )
        console.print(f"  MX: {hosts}")
    if trace.chosen:
        c = trace.chosen
        console.print(f"  chosen: {c['host']} {c['address']}:{c['port']} — {c['why']}")
    console.print(_waterfall(trace))
    if trace.tls:
        tls = trace.tls
        how = "resumed" if tls["resumed"] else "full handshake"
        checked = "certificate verified" if tls["verified"] else "certificate not verified"
        console.print(f"  TLS: {tls['version']} {tls['cipher']}, {how}, {checked}")
    elif trace.session:
        console.print("  TLS: none (plaintext session)")
    if trace.capabilities:
        console.print("  capabilities: " + " · ".join(trace.capabilities))
    for rcpt, reply in trace.recipients.items():
        ok = reply is not None and reply[:1] == "2"
        colour = "green" if ok else "red"
        console.print(f"  [{colour}]{rcpt}[/]: {reply or 'not tried'}")
    colour = "green" if trace.ok else "red" if trace.outcome == "failed" else "yellow"
    console.print(f"  outcome: [{colour}]{trace.outcome}[/] — {OUTCOMES[trace.outcome]}")
    if trace.error:
        console.print(f"  [red]error: {trace.error}[/]")
    console.print(f"  verdict: [bold]{verdict(trace)}[/]")


def _print_comparison(console: Console, traces: list[Trace], reuse: bool) -> None:
    first = traces[0]
    for later in traces[1:]:
        console.print(compare(first, later))
    last = traces[-1]
    saved = setup_ms(last)
    if not reuse and last.session == "new" and saved > 0:
        console.print(
            f"a pooled session would also skip the setup (connect → EHLO): {saved:.2f} ms "
            f"of run {last.run}; see --reuse"
        )


@click.command(name="trace")
@click.argument("recipients", nargs=-1)
@click.option("--server", help="Trace one server HOST:PORT instead of the recipients' MX hosts.")
@click.option(
    "--nameserver",
    "nameservers",
    multiple=True,
    help="DNS server IP[:PORT] for the MX lookup (repeatable; default: the system's).",
)
@click.option("--port", default=25, show_default=True, help="MX port (direct mode).")
@connection_options
@click.option("--from", "sender", default="", help="Envelope sender (default: <>).")
@click.option("--send", is_flag=True, help="Really send a short test message (needs --from).")
@click.option(
    "--repeat",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Runs in one command, sharing the DNS cache, TLS sessions and pool.",
)
@click.option("--reuse", is_flag=True, help="Keep the session in the pool between runs.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds allowed per phase.")
def trace_command(
    recipients: tuple[str, ...],
    server: str | None,
    nameservers: tuple[str, ...],
    port: int,
    tls: str | None,
    insecure: bool,
    cafile: str | None,
    user: str | None,
    password: str | None,
    sender: str,
    send: bool,
    repeat: int,
    reuse: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Trace a delivery attempt: DNS, connect, TLS, EHLO, MAIL/RCPT, each phase timed.

    Without --send nothing is delivered: the trace stops after RCPT with RSET and QUIT.
    Give RECIPIENTS (user@domain) to trace their MX hosts, or --server HOST:PORT.
    """
    try:
        request = TraceRequest(
            recipients=recipients,
            server=parse_server(server) if server is not None else None,
            port=port,
            tls=TLSMode.parse(tls or "opportunistic"),
            verify=False if insecure else None,
            cafile=cafile,
            username=user,
            password=password,
            sender=sender,
            send=send,
            nameservers=list(nameservers) or None,
            timeout=timeout,
            repeat=repeat,
            reuse=reuse,
        )
        request.check()
        traces = app.run(run_trace(request))
    except (MxpressError, OSError) as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps([to_json(t) for t in traces], indent=2))
    else:
        console = Console(highlight=False)
        for trace in traces:
            _print_trace(console, trace)
            console.print()
        if len(traces) > 1:
            _print_comparison(console, traces, reuse)
    code = _exit_code(traces)
    if code == 1:
        errors = dict.fromkeys(t.error for t in traces if t.error)
        _fail("; ".join(e for e in errors if e), code)
    sys.exit(code)
