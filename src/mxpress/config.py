"""Typed settings for `mxpress serve`: one TOML file, overridable from the environment.

Every key is checked at start: an unknown key, a wrong type or a bad value stops the
server with a message naming the key (`submission.listen: ...`). With no file at all the
defaults run a relay on 127.0.0.1 with its queue in ./var.

Environment: `MXPRESS_CONFIG` names the file; `MXPRESS__SECTION__KEY=value` overrides one
key (the value is read as TOML when it parses, else as a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from mxpress import affinity
from mxpress.errors import ConfigError

MAX_WORKERS = 64


@dataclass(frozen=True)
class ServerSettings:
    hostname: str = "localhost"  # our name in EHLO, Received and bounces
    data_dir: str = "var"
    # Relay processes: one per core is the most it can use (each has its own queue file
    # in data_dir; they accept on one shared SMTP socket). 1: one process.
    workers: int = 1
    # Pin worker i to the i-th CPU it may use (all its threads): see affinity.py.
    cpu_affinity: bool = False


@dataclass(frozen=True)
class SubmissionSettings:
    enabled: bool = True
    listen: str = "127.0.0.1:2525"
    tls_cert: str | None = None
    tls_key: str | None = None
    implicit_tls: bool = False
    users: dict[str, str] = field(default_factory=dict)  # user -> scrypt hash
    trusted_networks: list[str] = field(default_factory=list)  # may relay without AUTH
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 1000


@dataclass(frozen=True)
class HTTPSettings:
    enabled: bool = True
    listen: str = "127.0.0.1:8025"
    api_keys: dict[str, str] = field(default_factory=dict)  # name -> sha256 hex of the key


@dataclass(frozen=True)
class DeliverySettings:
    relay: str | None = None  # smtp[s|+starttls|+plain]://user:pass@host:port; else MX
    port: int = 25
    tls: str = "opportunistic"
    verify: bool | None = None
    cafile: str | None = None
    max_connections: int = 100
    max_per_destination: int = 10
    concurrency: int = 500  # messages being delivered at once
    per_domain_concurrency: int = 100  # ... of which for one recipient domain
    lease_seconds: float = 600.0
    poll_interval: float = 1.0
    timeout: float = 60.0


@dataclass(frozen=True)
class DNSSettings:
    nameservers: list[str] = field(default_factory=list)  # empty: the system's
    timeout: float = 2.0


@dataclass(frozen=True)
class RetrySettings:
    first_retry: float = 300.0
    max_backoff: float = 4000.0
    max_queue_lifetime: float = 2 * 86400.0
    bounce_queue_lifetime: float = 86400.0
    delay_warning_time: float = 0.0  # tell the sender once, this long after arrival; 0: never


@dataclass(frozen=True)
class ObserveSettings:
    delivery_log: bool = True  # JSON lines, one per recipient per attempt, in data_dir
    delivery_log_max_bytes: int = 50 * 1024 * 1024  # rotate at this size
    delivery_log_backups: int = 5  # rotated files kept (delivery.jsonl.1 ... .N)
    top_domains: int = 20  # recipient domains with their own metric label; the rest "other"
    queue_counts_interval: float = 15.0  # queue depth gauges: a full scan, so not per scrape
    profile_port: int = 0  # 0: off; else a profiling listener on 127.0.0.1, without auth
    worker_metrics_interval: float = 5.0  # workers > 0 hand their metrics to worker 0 so often


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    dns: DNSSettings = field(default_factory=DNSSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    observe: ObserveSettings = field(default_factory=ObserveSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


def load_settings(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from `path` (or $MXPRESS_CONFIG, or defaults) plus environment overrides."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    path = path or env.get("MXPRESS_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for name, value in env.items():
        if name.startswith("MXPRESS__"):
            parts = name[len("MXPRESS__") :].lower().split("__")
            if len(parts) != 2:
                raise ConfigError(f"{name}: use MXPRESS__SECTION__KEY (e.g. MXPRESS__HTTP__LISTEN)")
            raw.setdefault(parts[0], {})[parts[1]] = _env_value(value)
    settings = _build(Settings, raw, "")
    assert isinstance(settings, Settings)
    _check(settings)
    return settings


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{where}{key}: unknown key{hint}; known keys: {allowed}")
    values = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        hint = hints[f.name]
        key = f"{where}{f.name}"
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, raw[f.name], key + ".")
        else:
            values[f.name] = _coerce(raw[f.name], hint, key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of name = value, got {value!r}")
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")


def parse_listen(value: str, key: str) -> tuple[str, int]:
    """HOST:PORT for a listener (port 0: any free port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT like 127.0.0.1:2525, got {value!r}")
    return host, int(port)


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value!r}")


def _check(s: Settings) -> None:
    if not 1 <= s.server.workers <= MAX_WORKERS:
        raise ConfigError(f"server.workers: 1-{MAX_WORKERS}, got {s.server.workers!r}")
    if s.server.cpu_affinity:
        affinity.check_supported()
    parse_listen(s.submission.listen, "submission.listen")
    parse_listen(s.http.listen, "http.listen")
    if (s.submission.tls_cert is None) != (s.submission.tls_key is None):
        raise ConfigError("submission.tls_cert and submission.tls_key go together")
    if s.submission.implicit_tls and s.submission.tls_cert is None:
        raise ConfigError("submission.implicit_tls needs submission.tls_cert and tls_key")
    for path_key in ("tls_cert", "tls_key"):
        path = getattr(s.submission, path_key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"submission.{path_key}: no such file {path!r}")
    for i, net in enumerate(s.submission.trusted_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"submission.trusted_networks[{i}]: not a network like 127.0.0.0/8: {net!r}"
            ) from None
    for user, stored in s.submission.users.items():
        if not stored.startswith("scrypt$"):
            raise ConfigError(
                f"submission.users.{user}: expected a scrypt hash (make one with "
                "`python -m mxpress.security.passwords`), not a plain password"
            )
    for name, digest in s.http.api_keys.items():
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ConfigError(
                f"http.api_keys.{name}: expected the SHA-256 hex digest of the key "
                "(`printf %s KEY | sha256sum`), not the key itself"
            )
    d = s.delivery
    if d.tls not in ("none", "opportunistic", "required"):
        raise ConfigError(f"delivery.tls: one of none, opportunistic, required; got {d.tls!r}")
    if not 0 < d.port < 65536:
        raise ConfigError(f"delivery.port: 1-65535, got {d.port!r}")
    for key in ("max_connections", "max_per_destination", "concurrency", "per_domain_concurrency"):
        _positive(getattr(d, key), f"delivery.{key}")
    for key in ("lease_seconds", "poll_interval", "timeout"):
        _positive(getattr(d, key), f"delivery.{key}")
    _positive(s.dns.timeout, "dns.timeout")
    r = s.retry
    for key in ("first_retry", "max_backoff", "max_queue_lifetime", "bounce_queue_lifetime"):
        _positive(getattr(r, key), f"retry.{key}")
    if r.delay_warning_time < 0:
        raise ConfigError(
            f"retry.delay_warning_time: 0 (never) or more seconds, got {r.delay_warning_time!r}"
        )
    _positive(s.submission.max_message_size, "submission.max_message_size")
    o = s.observe
    if o.delivery_log_max_bytes < 4096:
        raise ConfigError(
            f"observe.delivery_log_max_bytes: at least 4096, got {o.delivery_log_max_bytes!r}"
        )
    if o.delivery_log_backups < 1:  # 0 would make the handler never rotate: unbounded
        raise ConfigError(
            f"observe.delivery_log_backups: at least 1, got {o.delivery_log_backups!r}"
        )
    if o.top_domains < 0:
        raise ConfigError(f"observe.top_domains: 0 or more, got {o.top_domains!r}")
    _positive(o.queue_counts_interval, "observe.queue_counts_interval")
    _positive(o.worker_metrics_interval, "observe.worker_metrics_interval")
    if not 0 <= o.profile_port < 65536:
        raise ConfigError(f"observe.profile_port: 0 (off) or 1-65535, got {o.profile_port!r}")
