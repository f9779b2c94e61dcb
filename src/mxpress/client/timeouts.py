"""Per-phase timeouts of an SMTP session (defaults from RFC 5321 §4.5.3.2)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from mxpress.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each phase. RFC 5321 gives the server minutes; we follow it
    for the SMTP phases and use shorter limits where the RFC is silent (connect, TLS)."""

    connect: float = 30.0
    banner: float = 300.0
    ehlo: float = 300.0
    starttls: float = 120.0
    tls: float = 60.0
    auth: float = 120.0
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0
    end_of_data: float = 600.0
    rset: float = 120.0
    noop: float = 120.0
    quit: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(
                    f"timeout {f.name!r} must be a positive number of seconds, got {value!r}"
                )

    @classmethod
    def uniform(cls, seconds: float) -> Timeouts:
        """Every phase limited to `seconds` (QUIT to at most 10 s: it is only politeness)."""
        return cls(**{f.name: seconds for f in fields(cls)}).with_(quit=min(seconds, 10.0))

    def with_(self, **changes: float) -> Timeouts:
        return replace(self, **changes)

    def for_phase(self, phase: str) -> float:
        """Timeout for an engine or session phase name (bdat counts as end of data)."""
        if phase == "bdat":
            return self.end_of_data
        value = getattr(self, phase, None)
        return float(value) if isinstance(value, int | float) else self.mail

    @classmethod
    def coerce(cls, value: float | Timeouts | None) -> Timeouts:
        if value is None:
            return cls()
        if isinstance(value, Timeouts):
            return value
        if isinstance(value, int | float):
            return cls.uniform(float(value))
        raise ConfigError(f"timeout must be seconds or a Timeouts object, got {value!r}")
