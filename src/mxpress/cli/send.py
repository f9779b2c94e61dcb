"""`mxpress send`: build (or read) a message and send it through one SMTP server."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mxpress import app
from mxpress.client.session import TLSMode, connect
from mxpress.errors import ConfigError, MxpressError
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


async def _send(
    host: str,
    port: int,
    tls: TLSMode,
    insecure: bool,
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
        tls=tls,
        verify=not insecure,
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
        timings = dict(session.timings)
        return results[0], timings, tls_text


@click.command(name="send")
@click.option("--server", required=True, help="SMTP server as HOST:PORT.")
@click.option("--starttls", "tls", flag_value="required", help="Require STARTTLS.")
@click.option("--tls", "tls", flag_value="implicit", help="Implicit TLS (port 465).")
@click.option("--no-tls", "tls", flag_value="none", help="Never use TLS.")
@click.option("--insecure", is_flag=True, help="Do not verify the server certificate.")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="CA bundle (PEM).")
@click.option("--user", help="Username for AUTH.")
@click.option("--password", help="Password for AUTH.")
@click.option("--from", "sender", required=True, help="Envelope sender and From header.")
@click.option("--to", "recipients", multiple=True, required=True, help="Recipient (repeatable).")
@click.option("--subject", default="", help="Subject (Unicode welcome).")
@click.option("--body", help="Plain-text body.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False), help="A .eml file.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds allowed per phase.")
def send_command(
    server: str,
    tls: str | None,
    insecure: bool,
    cafile: str | None,
    user: str | None,
    password: str | None,
    sender: str,
    recipients: tuple[str, ...],
    subject: str,
    body: str | None,
    file: str | None,
    timeout: float,
) -> None:
    """Send one message through an SMTP server and print each recipient's result."""
    console = Console(highlight=False)
    try:
        host, port = parse_server(server)
        if (body is None) == (file is None):
            raise ConfigError("give exactly one of --body TEXT or --file MSG.eml")
        if (user is None) != (password is None):
            raise ConfigError("--user and --password go together")
        if file is not None:
            data = Path(file).read_bytes()
        else:
            data = to_bytes(
                build_message(sender, list(recipients), subject=subject, text=body or "")
            )
        mode = TLSMode.parse(tls or "opportunistic")
        result, timings, tls_text = app.run(
            _send(
                host,
                port,
                mode,
                insecure,
                cafile,
                user,
                password,
                sender,
                list(recipients),
                data,
                timeout,
            )
        )
    except (MxpressError, OSError) as exc:
        click.echo(f"mxpress send: {exc}", err=True)
        sys.exit(1)
    table = Table("recipient", "result", "reply", title=f"{host}:{port} (TLS: {tls_text})")
    for rcpt in recipients:
        reply = result.reply_for(rcpt)
        delivered = rcpt in result.accepted
        table.add_row(
            rcpt,
            "[green]accepted[/]" if delivered else "[red]refused[/]",
            str(reply) if reply else "not tried",
        )
    console.print(table)
    phases = {**timings, **result.timings}
    console.print("phases: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in phases.items()))
    if result.error is not None:
        click.echo(f"mxpress send: {result.error}", err=True)
        sys.exit(1)
    if result.rejected:
        refused = ", ".join(result.rejected)
        click.echo(f"mxpress send: delivered in part; refused: {refused}", err=True)
        sys.exit(2)
