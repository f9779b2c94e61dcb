"""`mxpress serve`: run the relay (SMTP submission + HTTP API + queue + delivery)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import sys

import click

from mxpress import affinity, app
from mxpress.config import load_settings, parse_listen
from mxpress.errors import MxpressError
from mxpress.relay import build_relay
from mxpress.server.balance import Handoff, HandoffFds
from mxpress.supervisor import listening_socket, run_workers


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
# Set by the supervisor: which worker this is, the shared SMTP socket, the hand-off's.
@click.option("--worker", type=int, default=None, hidden=True)
@click.option("--listen-fd", type=int, default=None, hidden=True)
@click.option("--handoff", default=None, hidden=True)
def serve_command(
    config: str | None,
    log_level: str,
    profile_port: int | None,
    worker: int | None,
    listen_fd: int | None,
    handoff: str | None,
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
        workers = settings.server.workers
        if worker is None and workers > 1:
            argv = [sys.executable, "-m", "mxpress.cli", "serve", "--log-level", log_level]
            if config is not None:
                argv += ["--config", config]
            if profile_port is not None:
                argv += ["--profile-port", str(profile_port)]
            listeners, shared = [], None
            if settings.submission.enabled:  # one socket for all, and the hand-off's parts
                host, port = parse_listen(settings.submission.listen, "submission.listen")
                listeners.append(listening_socket(host, port, workers))
                shared = Handoff(workers)
                argv += ["--listen-fd", str(listeners[0].fileno())]
                argv += ["--handoff", shared.fds.to_arg()]
            sys.exit(run_workers(argv, workers, listeners=listeners, handoff=shared))
        if settings.server.cpu_affinity:  # before any thread starts: they inherit it
            cpu = affinity.pin_worker(worker or 0)
            logging.getLogger(__name__).info("worker %d pinned to CPU %d", worker or 0, cpu)
        listener = None if listen_fd is None else socket.socket(fileno=listen_fd)
        fds = None if handoff is None else HandoffFds.from_arg(handoff)
        relay = build_relay(settings, worker or 0, listener=listener, handoff=fds)
        app.run(relay.serve(supervised=worker is not None))
    except (MxpressError, OSError) as exc:
        click.echo(f"mxpress serve: {exc}", err=True)
        sys.exit(1)
