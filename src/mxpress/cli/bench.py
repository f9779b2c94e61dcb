"""`mxpress bench`: the built-in load test, naive vs pooled, against one SMTP server.

    mxpress bench --server 127.0.0.1:2525 --no-tls --messages 500 --concurrency 10

- naive: per message a new session (`mxpress.connect`: TCP, greeting, EHLO, STARTTLS with
  a full handshake, AUTH), one transaction, QUIT: what smtplib users pay per send.
- pooled: one `Mailer` in relay mode to the same server with the same concurrency:
  pooled sessions, resumed TLS, transactions pipelined across senders.

Both send the same message to the same recipient; the table shows throughput, latency
(p50/p99 per message, as its sender waited), errors and TCP connects, then pooled/naive.
The naive mode still pipelines within a message when the server offers PIPELINING, so
against such a server the ratio understates what replacing smtplib gains.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mxpress import app
from mxpress.cli.options import connection_options
from mxpress.cli.send import parse_server, relay_url
from mxpress.client.session import TLSMode, connect
from mxpress.errors import ConfigError, MxpressError
from mxpress.mailer import Mailer
from mxpress.message import build_message, to_bytes

Advance = Callable[[], None]


@dataclass(slots=True)
class Target:
    host: str
    port: int
    mode: TLSMode
    verify: bool
    cafile: str | None
    user: str | None
    password: str | None
    timeout: float
    server: str  # as given, for the relay URL


@dataclass(slots=True)
class ModeResult:
    mode: str
    messages: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the messages sent
    errors: int = 0
    connects: int = 0
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the latencies, in seconds."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    @property
    def error_rate(self) -> float:
        return self.errors / self.messages if self.messages else 0.0

    def fail(self, error: object) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = str(error)

    def as_json(self) -> dict[str, Any]:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        return {
            "mode": self.mode,
            "messages": self.messages,
            "sent": len(self.latencies),
            "seconds": round(self.seconds, 4),
            "msgs_per_s": round(self.rate, 2),
            "p50_ms": round(p50 * 1e3, 3) if p50 is not None else None,
            "p99_ms": round(p99 * 1e3, 3) if p99 is not None else None,
            "mean_ms": round(statistics.fmean(self.latencies) * 1e3, 3) if self.latencies else None,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "connects": self.connects,
            "first_error": self.first_error,
        }


async def _run_workers(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    """Run `one` `count` times on `concurrency` workers; the elapsed seconds."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return time.perf_counter() - start


async def run_naive(
    t: Target, sender: str, rcpt: str, data: bytes, count: int, concurrency: int, advance: Advance
) -> ModeResult:
    result = ModeResult("naive", count)

    async def one() -> None:
        start = time.perf_counter()
        result.connects += 1
        try:
            session = await connect(
                t.host,
                t.port,
                tls=t.mode,
                verify=t.verify,
                cafile=t.cafile,
                username=t.user,
                password=t.password,
                timeout=t.timeout,
            )  # no shared TLS session store: a full handshake every time, as smtplib
            async with session:
                [tx] = await session.send_many([(sender, [rcpt], data)])
        except (MxpressError, OSError) as exc:
            result.fail(exc)
        else:
            if tx.ok and rcpt in tx.accepted:
                result.latencies.append(time.perf_counter() - start)
            else:
                result.fail(tx.error or tx.reply_for(rcpt) or "refused")
        advance()

    result.seconds = await _run_workers(count, concurrency, one)
    return result


async def run_pooled(
    t: Target, sender: str, rcpt: str, data: bytes, count: int, concurrency: int, advance: Advance
) -> ModeResult:
    result = ModeResult("pooled", count)
    mailer = Mailer(
        relay_url(t.server, t.mode, t.user, t.password),
        verify=t.verify,
        cafile=t.cafile,
        timeout=t.timeout,
        max_connections=concurrency,
        max_per_destination=concurrency,
    )
    async with mailer:

        async def one() -> None:
            start = time.perf_counter()
            try:
                sent = await mailer.send(data, sender=sender, recipients=[rcpt])
            except MxpressError as exc:
                result.fail(exc)
            else:
                if sent.ok:
                    result.latencies.append(time.perf_counter() - start)
                else:
                    reasons = [str(r) for r in sent.recipients.values()]
                    result.fail(sent.error or "; ".join(reasons) or "not sent")
            advance()

        result.seconds = await _run_workers(count, concurrency, one)
        total = mailer.pool.stats.total
        result.connects = total.created + total.connect_failures
    return result


async def _bench(
    t: Target,
    sender: str,
    rcpt: str,
    data: bytes,
    count: int,
    concurrency: int,
    console: Console,
) -> list[ModeResult]:
    columns = (
        TextColumn("{task.description:<7}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    results = []
    with Progress(*columns, console=console, transient=True) as progress:
        tasks = {
            name: progress.add_task(name, total=count, rate="") for name in ("naive", "pooled")
        }
        for name, run in (("naive", run_naive), ("pooled", run_pooled)):
            task = tasks[name]
            started = time.perf_counter()
            advance = _advancer(progress, task, started)
            results.append(await run(t, sender, rcpt, data, count, concurrency, advance))
    return results


def _advancer(progress: Progress, task: TaskID, started: float) -> Advance:
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        rate = done / max(time.perf_counter() - started, 1e-9)
        progress.update(task, advance=1, rate=f"{rate:,.0f} msg/s")

    return advance


def ratio(results: list[ModeResult]) -> float | None:
    """pooled throughput / naive throughput."""
    by_mode = {r.mode: r for r in results}
    naive, pooled = by_mode.get("naive"), by_mode.get("pooled")
    if naive is None or pooled is None or naive.rate == 0:
        return None
    return pooled.rate / naive.rate


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.2f}" if seconds is not None else "-"


def print_table(console: Console, t: Target, concurrency: int, results: list[ModeResult]) -> None:
    table = Table(
        title=f"mxpress bench: {t.host}:{t.port}, TLS {t.mode.value}, "
        f"{concurrency} concurrent senders",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("mode", no_wrap=True)
    for name in ("messages", "msgs/s", "p50 ms", "p99 ms", "errors", "err rate", "connects"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in results:
        table.add_row(
            r.mode,
            str(r.messages),
            f"{r.rate:,.1f}",
            _ms(r.percentile(0.5)),
            _ms(r.percentile(0.99)),
            str(r.errors),
            f"{r.error_rate:.1%}",
            str(r.connects),
        )
    console.print(table)
    by_mode = {r.mode: r for r in results}
    gain = ratio(results)
    if gain is not None:
        n50, p50 = by_mode["naive"].percentile(0.5), by_mode["pooled"].percentile(0.5)
        latency = f", p50 latency {n50 / p50:.1f}x lower" if n50 and p50 else ""
        console.print(f"pooled / naive: [bold]{gain:.1f}x[/] the throughput{latency}")
    for r in results:
        if r.first_error:
            console.print(f"[red]{r.mode}: first error:[/] {r.first_error}")


@click.command(name="bench")
@click.option("--server", required=True, help="SMTP server HOST:PORT to load.")
@connection_options
@click.option(
    "--messages", default=200, show_default=True, type=click.IntRange(1), help="Per mode."
)
@click.option(
    "--concurrency",
    default=10,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Concurrent senders (and the pooled mode's session limit).",
)
@click.option("--from", "sender", default="bench@mxpress.test", show_default=True)
@click.option("--to", "recipient", default="sink@mxpress.test", show_default=True)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds allowed per phase.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_command(
    server: str,
    tls: str | None,
    insecure: bool,
    cafile: str | None,
    user: str | None,
    password: str | None,
    messages: int,
    concurrency: int,
    sender: str,
    recipient: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Load a server twice, naive (a session per message) then pooled, and compare."""
    out = Console(highlight=False)
    progress_console = Console(stderr=True, highlight=False)
    try:
        if (user is None) != (password is None):
            raise ConfigError("--user and --password go together")
        host, port = parse_server(server)
        target = Target(
            host,
            port,
            TLSMode.parse(tls or "opportunistic"),
            not insecure,
            cafile,
            user,
            password,
            timeout,
            server,
        )
        data = to_bytes(
            build_message(
                sender,
                [recipient],
                subject="mxpress bench",
                text="mxpress bench message\n" + "0123456789" * 100 + "\n",
            )
        )
        results = app.run(
            _bench(target, sender, recipient, data, messages, concurrency, progress_console)
        )
    except (MxpressError, OSError) as exc:
        click.echo(f"mxpress bench: {exc}", err=True)
        sys.exit(1)
    if as_json:
        doc = {
            "server": f"{target.host}:{target.port}",
            "tls": target.mode.value,
            "concurrency": concurrency,
            "modes": [r.as_json() for r in results],
            "ratio": round(gain, 3) if (gain := ratio(results)) is not None else None,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        print_table(out, target, concurrency, results)
    if all(not r.latencies for r in results):
        sys.exit(1)  # nothing got through at all: the target is wrong, not slow
