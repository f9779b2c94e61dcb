"""The `mxpress` command line. Each command builds what it needs through mxpress.app."""

from __future__ import annotations

import click

from mxpress.cli.bench import bench_command
from mxpress.cli.dns import dns_group
from mxpress.cli.queue import queue_group
from mxpress.cli.send import send_command
from mxpress.cli.serve import serve_command
from mxpress.cli.trace import trace_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mxpress")
def cli() -> None:
    """mxpress: fast, reliable outbound e-mail delivery."""


cli.add_command(send_command)
cli.add_command(dns_group)
cli.add_command(queue_group)
cli.add_command(serve_command)
cli.add_command(trace_command)
cli.add_command(bench_command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="mxpress")
