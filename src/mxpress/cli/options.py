"""Options shared by the commands that talk to an SMTP server (send, trace, bench)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_CONNECTION_OPTIONS = (
    click.option("--starttls", "tls", flag_value="required", help="Require STARTTLS."),
    click.option("--tls", "tls", flag_value="implicit", help="Implicit TLS (port 465)."),
    click.option("--no-tls", "tls", flag_value="none", help="Never use TLS."),
    click.option("--insecure", is_flag=True, help="Do not verify the server certificate."),
    click.option("--cafile", type=click.Path(exists=True, dir_okay=False), help="CA bundle (PEM)."),
    click.option("--user", help="Username for AUTH."),
    click.option("--password", help="Password for AUTH."),
)


def connection_options(command: F) -> F:
    """--starttls | --tls | --no-tls, --insecure, --cafile, --user, --password."""
    for option in reversed(_CONNECTION_OPTIONS):
        command = option(command)
    return command
