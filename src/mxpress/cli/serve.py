"""`mxpress serve`: run the relay (SMTP submission + HTTP API + queue + delivery)."""

from __future__ import annotations

import dataclasses
import logging
import sys

import click

from mxpress import affinity, app
from mxpress.config import load_settings
from mxpress.errors import MxpressError
from mxpress.relay import build_relay
from mxpress.supervisor import run_workers


@click.command(name="serve")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="TOML settings file (default: $MXPRESS_CONFIG, else built-in defaults).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--profile-port",
    type=click.IntRange(1, 65535),
    help="Serve on-demand profiles at http://127.0.0.1:PORT/profile?seconds=N&format=html "
    "(local only, no auth; overrides observe.profile_port).",
)
@click.option("--worker", type=int, default=None, hidden=True)  # set by the supervisor
def serve_command(
    config: str | None, log_level: str, profile_port: int | None, worker: int | None
) -> None:
    """Run the relay until SIGTERM/SIGINT, then stop gracefully."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(config)
        if profile_port is not None:
            observe = dataclasses.replace(settings.observe, profile_port=profile_port)
            settings = dataclasses.replace(settings, observe=observe)
        if worker is None and settings.server.workers > 1:
            argv = [sys.executable, "-m", "mxpress.cli", "serve", "--log-level", log_level]
            if config is not None:
                argv += ["--config", config]
            if profile_port is not None:
                argv += ["--profile-port", str(profile_port)]
            sys.exit(run_workers(argv, settings.server.workers))
        if settings.server.cpu_affinity:  # before any thread starts: they inherit it
            cpu = affinity.pin_worker(worker or 0)
            logging.getLogger(__name__).info("worker %d pinned to CPU %d", worker or 0, cpu)
        relay = build_relay(settings, worker or 0)
        app.run(relay.serve(supervised=worker is not None))
    except (MxpressError, OSError) as exc:
        click.echo(f"mxpress serve: {exc}", err=True)
        sys.exit(1)
