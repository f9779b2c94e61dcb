"""`TraceRequest`: what `run_trace` is asked to trace, checked before anything runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mxpress.client.session import TLSMode
from mxpress.delivery.router import domain_of
from mxpress.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """What to trace. Direct mode (no `server`): the recipients' domain's MX hosts on
    `port`. `verify=None` verifies certificates as delivery does: for `server`, and for
    MX hosts only when TLS is required or implicit. `sender` "" is the null sender <>."""

    recipients: Sequence[str] = ()
    server: tuple[str, int] | None = None
    port: int = 25
    tls: TLSMode = TLSMode.OPPORTUNISTIC
    verify: bool | None = None
    cafile: str | None = None
    username: str | None = None
    password: str | None = None
    sender: str = ""
    send: bool = False
    message: bytes | None = None  # with `send`; default: a short test message
    nameservers: Sequence[str] | None = None
    timeout: float = 30.0
    repeat: int = 1
    reuse: bool = False  # keep the session in the pool for the next run

    @property
    def mode(self) -> str:
        if self.send:
            return "send"
        return "probe" if self.recipients else "connect"

    @property
    def target(self) -> str:
        rcpts = ", ".join(self.recipients)
        if self.server is None:
            return rcpts
        where = host_port(*self.server)
        return f"{rcpts} via {where}" if rcpts else where

    @property
    def verifies(self) -> bool:
        if self.verify is not None:
            return self.verify
        return self.server is not None or self.tls in (TLSMode.REQUIRED, TLSMode.IMPLICIT)

    def check(self) -> None:
        """Raise ConfigError for a request that cannot run."""
        if not isinstance(self.repeat, int) or self.repeat < 1:
            raise ConfigError(f"repeat must be a whole number >= 1, got {self.repeat!r}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive seconds, got {self.timeout!r}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port!r}")
        if (self.username is None) != (self.password is None):
            raise ConfigError("a username and a password go together")
        if self.send and not (self.sender and self.recipients):
            raise ConfigError("sending needs a sender (--from) and at least one recipient")
        if self.server is None:
            if not self.recipients:
                raise ConfigError("give a recipient (user@domain) to trace, or a server")
            domains = {domain_of(r) for r in self.recipients}
            if len(domains) > 1:
                raise ConfigError(
                    "recipients must share one domain (one MX route per trace); got "
                    + ", ".join(sorted(domains))
                )


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
