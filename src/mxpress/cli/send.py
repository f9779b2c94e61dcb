"""`mxpress send`: one message (or a bulk file) through a server, or straight to the MX."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mxpress import app
from mxpress.cli.bulk import load_bulk
from mxpress.cli.options import connection_options
from mxpress.client.session import TLSMode, connect
from mxpress.delivery.result import Outcome, SendResult
from mxpress.delivery.router import relay_scheme
from mxpress.errors import ConfigError, MxpressError
from mxpress.mailer import Mailer
from mxpress.message import build_message, to_bytes
from mxpress.protocol.client import TransactionResult


def parse_server(value: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, or HOST (port 25)."""
    host, port = value, "25"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server must be HOST:PORT (e.g. smtp.example.com:587), got {value!r}")
    return host, int(port)


def relay_url(server: str, mode: TLSMode, user: str | None, password: str | None) -> str:
    """The Mailer relay URL for --server HOST:PORT, the TLS flag and --user/--password."""
    host, port = parse_server(server)
    auth = ""
    if user is not None:
        from urllib.parse import quote

        auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@"
    where = f"[{host}]" if ":" in host else host
    return f"{relay_scheme(mode)}://{auth}{where}:{port}"


def _fail(reason: object, code: int = 1) -> None:
    click.echo(f"mxpress send: {reason}", err=True)
    sys.exit(code)


async def _send_via_server(
    host: str,
    port: int,
    mode: TLSMode,
    verify: bool,
    cafile: str | None,
    user: str | None,
    password: str | None,
    sender: str,
    recipients: list[str],
    data: bytes,
    timeout: float,
) -> tuple[TransactionResult, dict[str, float], str]:
    session = await connect(
        host,
        port,
        tls=mode,
        verify=verify,
        cafile=cafile,
        username=user,
        password=password,
        timeout=timeout,
    )
    async with session:
        results = await session.send_many([(sender, recipients, data)])
        tls_text = "none"
        if session.tls_info:
            resumed = ", resumed" if session.tls_info.resumed else ""
            tls_text = f"{session.tls_info.version} {session.tls_info.cipher}{resumed}"
        return results[0], dict(session.timings), tls_text


def _print_session_result(
    console: Console,
    where: str,
    recipients: Sequence[str],
    result: TransactionResult,
    timings: dict[str, float],
    tls_text: str,
) -> None:
    table = Table("recipient", "result", "reply", title=f"{where} (TLS: {tls_text})")
    for rcpt in recipients:
        reply = result.reply_for(rcpt)
        table.add_row(
            rcpt,
            "[green]accepted[/]" if rcpt in result.accepted else "[red]refused[/]",
            str(reply) if reply else "not tried",
        )
    console.print(table)
    phases = {**timings, **result.timings}
    console.print("phases: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in phases.items()))
    if result.error is not None:
        _fail(result.error)
    if result.rejected:
        _fail(f"delivered in part; refused: {', '.join(result.rejected)}", 2)


def _print_send_result(console: Console, result: SendResult) -> None:
    table = Table("recipient", "result", "server", "reply / reason", title="direct delivery")
    colour = {Outcome.DELIVERED: "green", Outcome.DEFERRED: "yellow", Outcome.BOUNCED: "red"}
    for rcpt, r in result.recipients.items():
        table.add_row(
            rcpt,
            f"[{colour[r.outcome]}]{r.outcome.value}[/]",
            r.host or "-",
            str(r.reply) if r.outcome is Outcome.DELIVERED else r.reason,
        )
    console.print(table)
    console.print(
        "phases: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in result.timings.items())
    )
    if not result.accepted:
        _fail("nothing was delivered: " + "; ".join(r.reason for r in result.recipients.values()))
    if not result.ok:
        _fail(
            f"delivered in part; not delivered: {', '.join(result.rejected | result.deferred)}", 2
        )


def _mailer(
    server: str | None,
    mode: TLSMode,
    verify: bool | None,
    cafile: str | None,
    user: str | None,
    password: str | None,
    nameservers: Sequence[str],
    port: int,
    timeout: float,
    connections: int,
) -> Mailer:
    if server is None:
        return Mailer(
            nameservers=list(nameservers) or None,
            port=port,
            tls=mode,
            verify=verify,
            cafile=cafile,
            timeout=timeout,
            max_per_destination=connections,
        )
    relay = relay_url(server, mode, user, password)
    return Mailer(
        relay, verify=verify, cafile=cafile, timeout=timeout, max_per_destination=connections
    )


async def _bulk(mailer: Mailer, messages: list[bytes], console: Console) -> list[SendResult]:
    results: list[SendResult] = []
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with mailer:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("send", total=len(messages))
            step = 500
            for start in range(0, len(messages), step):
                chunk = messages[start : start + step]
                results += await mailer.send_many(chunk, concurrency=200)
                progress.advance(task, len(chunk))
    return results


def _print_bulk_summary(console: Console, results: list[SendResult], elapsed: float) -> None:
    sent = sum(len(r.accepted) for r in results)
    refused = sum(len(r.rejected) for r in results) + sum(1 for r in results if r.error)
    deferred = sum(len(r.deferred) for r in results)
    table = Table("messages", "sent", "refused", "deferred", "seconds", "msgs/s", title="bulk send")
    rate = len(results) / elapsed if elapsed else 0.0
    table.add_row(
        str(len(results)), str(sent), str(refused), str(deferred), f"{elapsed:.2f}", f"{rate:,.0f}"
    )
    console.print(table)
    failures = [r for r in results if r.error or not r.ok][:5]
    for r in failures:
        reason = r.error or "; ".join(str(x) for x in (r.rejected | r.deferred).values())
        console.print(f"  [red]{r.sender or '?'}[/]: {reason}")
    if refused or deferred:
        sys.exit(2)


@click.command(name="send")
@click.option("--server", help="SMTP server HOST:PORT; without it, mail goes to each MX.")
@connection_options
@click.option("--from", "sender", help="Envelope sender and From header.")
@click.option("--to", "recipients", multiple=True, help="Recipient (repeatable).")
@click.option("--subject", default="", help="Subject (Unicode welcome).")
@click.option("--body", help="Plain-text body.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False), help="A .eml file.")
@click.option(
    "--bulk",
    type=click.Path(exists=True, dir_okay=False),
    help="Send many: a .csv (from,to,subject,body) or .jsonl file.",
)
@click.option(
    "--nameserver",
    "nameservers",
    multiple=True,
    help="DNS server IP[:PORT] for MX lookups (direct delivery).",
)
@click.option("--port", default=25, show_default=True, help="MX port (direct delivery).")
@click.option("--connections", default=10, show_default=True, help="Sessions per server.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds allowed per phase.")
def send_command(
    server: str | None,
    tls: str | None,
    insecure: bool,
    cafile: str | None,
    user: str | None,
    password: str | None,
    sender: str | None,
    recipients: tuple[str, ...],
    subject: str,
    body: str | None,
    file: str | None,
    bulk: str | None,
    nameservers: tuple[str, ...],
    port: int,
    connections: int,
    timeout: float,
) -> None:
    """Send a message (or --bulk many) and print what happened to each recipient."""
    console = Console(highlight=False)
    try:
        if (user is None) != (password is None):
            raise ConfigError("--user and --password go together")
        if server is not None:
            parse_server(server)  # a bad --server is reported before anything else
        mode = TLSMode.parse(tls or "opportunistic")
        verify = False if insecure else None
        if bulk is not None:
            messages = load_bulk(Path(bulk))
            mailer = _mailer(
                server,
                mode,
                verify,
                cafile,
                user,
                password,
                nameservers,
                port,
                timeout,
                connections,
            )
            start = time.perf_counter()
            results = app.run(_bulk(mailer, messages, console))
            _print_bulk_summary(console, results, time.perf_counter() - start)
            return
        if sender is None or not recipients:
            raise ConfigError("give --from and at least one --to (or --bulk FILE)")
        if (body is None) == (file is None):
            raise ConfigError("give exactly one of --body TEXT or --file MSG.eml")
        if file is not None:
            data = Path(file).read_bytes()
        else:
            data = to_bytes(
                build_message(sender, list(recipients), subject=subject, text=body or "")
            )
        if server is not None:
            host, sport = parse_server(server)
            outcome = app.run(
                _send_via_server(
                    host,
                    sport,
                    mode,
                    not insecure,
                    cafile,
                    user,
                    password,
                    sender,
                    list(recipients),
                    data,
                    timeout,
                )
            )
            _print_session_result(console, f"{host}:{sport}", recipients, *outcome)
            return
        mailer = _mailer(
            None, mode, verify, cafile, user, password, nameservers, port, timeout, connections
        )

        async def direct() -> SendResult:
            async with mailer:
                return await mailer.send(data, sender=sender, recipients=list(recipients))

        _print_send_result(console, app.run(direct()))
    except (MxpressError, OSError) as exc:
        _fail(exc)
