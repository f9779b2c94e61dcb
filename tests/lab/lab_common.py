"""Common pieces of the loopback lab: errors, the loopback check, finding binaries, free
ports, readiness waits, and LabServer, the handle every lab server extends.

Only 127.0.0.0/8 addresses are accepted: the lab must never touch another network, and the
system resolver here is not on loopback, so nothing in the lab may look a name up. Servers
still running when the interpreter exits are stopped; their registry lives only here.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "BinaryMissing",
    "LabError",
    "LabServer",
    "check_loopback",
    "find_binary",
    "free_port",
    "require_binary",
]

# Debian puts smtp-sink in /usr/sbin and the Postfix daemons (master) in its daemon_directory.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


class LabError(RuntimeError):
    """A lab server could not be started or misbehaved; the message says why."""


class BinaryMissing(LabError):
    """A program the lab needs (smtp-sink, postfix, ...) is not installed."""


# ---------------------------------------------------------------------------------------------
# small helpers


def check_loopback(host: str) -> str:
    """Return `host` if it is an IPv4 literal in 127.0.0.0/8, else raise ValueError.

    Literals only: a name would need a resolver, and the one here is not on loopback."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"lab address {host!r} is not an IP literal; use one in 127.0.0.0/8"
        ) from None
    if addr.version != 4 or addr not in _LOOPBACK:
        raise ValueError(f"lab address {host!r} is outside 127.0.0.0/8; only loopback is allowed")
    return host


def find_binary(name: str) -> str | None:
    """Path of `name` on PATH or in the usual sbin/Postfix daemon directories, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
    return shutil.which(name, path=path)


def require_binary(name: str) -> str:
    found = find_binary(name)
    if found is None:
        raise BinaryMissing(
            f"{name} not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}; "
            "install the Debian package 'postfix'"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (bind to 0, read it back, release it)."""
    check_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _proc_net_key(host: str, port: int) -> str:
    # /proc/net/tcp prints the address as the in-memory u32 in %08X, so byte order matters.
    raw = socket.inet_aton(host)
    if sys.byteorder == "little":
        raw = raw[::-1]
    return f"{raw.hex().upper()}:{port:04X}"


def _is_listening(host: str, port: int) -> bool:
    """True if something listens on host:port, judged without connecting when possible.

    A probe connection would show up as a session in smtp-sink's counters, so read
    /proc/net/tcp (state 0A = LISTEN) first and only fall back to connect()."""
    try:
        with open("/proc/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
    wanted = {_proc_net_key(host, port), _proc_net_key("0.0.0.0", port)}
    for line in lines:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and parts[1] in wanted:
            return True
    return False


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace").strip()


def _wait_until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# Servers still running when the interpreter exits are stopped, so an aborted test run does
# not leave smtp-sink or a Postfix master behind.
_LIVE: set[LabServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.stop()


class LabServer:
    """The common handle: address, stop(), message counting, context management."""

    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def stop(self) -> None:
        raise NotImplementedError

    def message_count(self) -> int:
        raise NotImplementedError

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least `n` messages were accepted; return the count.

        Counters lag the client's final 250 by a little (a log line, a counter flush),
        so tests wait instead of reading once. Raises LabError on timeout."""
        if not _wait_until(lambda: self.message_count() >= n, timeout):
            raise LabError(
                f"{type(self).__name__} on {self.host}:{self.port}: expected {n} messages "
                f"within {timeout} s, counted {self.message_count()}"
            )
        return self.message_count()

    def _register(self) -> None:
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _unregister(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port}>"


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
