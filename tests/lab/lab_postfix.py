"""A private Postfix smtpd instance on loopback (its own master, config and queue) that
discards mail by default, with optional STARTTLS (test CA) and AUTH (an in-process
Dovecot-protocol checker)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.lab.lab_ca import TestCA, make_test_ca
from tests.lab.lab_common import (
    BinaryMissing,
    LabError,
    LabServer,
    _is_listening,
    _tail,
    _wait_until,
    check_loopback,
    free_port,
    require_binary,
)
from tests.lab.lab_dovecot import DovecotAuth
from tests.lab.lab_postfix_files import (
    MASTER_CF,
    access_map,
    main_cf,
    make_queue_dirs,
    remove_path,
    scratch_dir,
    searchable_by,
)

__all__ = ["PostfixServer", "postfix_smtpd"]


class PostfixServer(LabServer):
    """A running private Postfix instance (its own master) whose smtpd discards all mail.

    Counting reads its own log file (`maillog`): qmgr's "(queue active)" line marks a message
    accepted and queued (once per message, as discard never defers); the discard agent's
    "status=sent" line marks one recipient delivered; smtpd's "reject: RCPT" marks a refused
    recipient."""

    def __init__(
        self,
        host: str,
        port: int,
        root: Path,
        proc: subprocess.Popen[bytes],
        hostname: str,
        ca: TestCA | None,
        remove: list[Path],
        auth: DovecotAuth | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.root = root
        self._auth = auth
        self.config_dir = root / "etc"
        self.maillog = root / "maillog"
        self.proc = proc
        self.hostname = hostname
        self.ca = ca
        self._remove = remove  # scratch dirs and links to delete at stop
        self._lock = threading.Lock()
        self._log_offset = 0
        self._partial = b""
        self._counts = {"messages": 0, "recipients": 0, "rejected": 0}
        self._register()

    @property
    def ca_pem(self) -> Path | None:
        """The CA file that verifies this server's certificate (None without TLS)."""
        return self.ca.ca_pem if self.ca is not None else None

    def log(self) -> str:
        """The whole maillog, for assertions and error reports."""
        return self.maillog.read_text("utf-8", "replace") if self.maillog.exists() else ""

    def counters(self) -> dict[str, int]:
        """{"messages": accepted, "recipients": delivered (discarded), "rejected": RCPTs refused}.

        Incremental: only log bytes added since the last call are parsed."""
        with self._lock:
            try:
                with open(self.maillog, "rb") as f:
                    f.seek(self._log_offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            self._log_offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                if line.endswith(b"(queue active)"):
                    self._counts["messages"] += 1
                elif b"status=sent" in line:
                    self._counts["recipients"] += 1
                elif b": reject: RCPT from" in line:  # "NOQUEUE: reject" or "<queue id>: reject"
                    self._counts["rejected"] += 1
            return dict(self._counts)

    def message_count(self) -> int:
        return self.counters()["messages"]

    def recipient_count(self) -> int:
        return self.counters()["recipients"]

    @property
    def auth_attempts(self) -> list[tuple[str, bool]]:
        """(user, accepted) for each AUTH checked, when started with `auth`."""
        return list(self._auth.attempts) if self._auth is not None else []

    def stop(self) -> None:
        pgid = self.proc.pid  # master calls setsid(), so its pid is its children's group
        if self.proc.poll() is None:
            # SIGTERM makes master pass the signal on to its children and exit.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not _wait_until(lambda: not _live_group_members(pgid), 5.0, 0.02):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            _wait_until(lambda: not _live_group_members(pgid), 2.0, 0.02)
        if self._auth is not None:
            self._auth.close()
        self._unregister()
        for path in self._remove:
            with contextlib.suppress(OSError):
                remove_path(path)
        self._remove = []


def _live_group_members(pgid: int) -> list[int]:
    """Pids (not zombies) in process group `pgid`, from /proc."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        # Fields after the ")" closing the command name: state ppid pgrp ...
        rest = raw[raw.rfind(b")") + 2 :].split()
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def postfix_smtpd(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls: bool = True,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    hostname: str = "mx1.test",
    reject_recipients: Iterable[str] = (),
    defer_recipients: Iterable[str] = (),
    auth: Mapping[str, str] | None = None,
    auth_required: bool = False,
    auth_tls_only: bool = True,
    max_connections: int = 100,
    message_size_limit: int = 10_240_000,
    extra_config: Mapping[str, str] | None = None,
    ready_timeout: float = 20.0,
) -> PostfixServer:
    """Start a private Postfix instance whose smtpd listens on host:port and discards all mail.

    It has its own config, queue and data directories under `workdir`/postfix-HOST-PORT (a temp
    dir removed on stop if `workdir` is None), so instances on 127.0.0.2:2525 and 127.0.0.3:2525
    can run side by side without touching /etc/postfix or a system Postfix. It offers
    PIPELINING, CHUNKING, 8BITMIME, SMTPUTF8, DSN and, with `tls`, STARTTLS (security level
    "may") with session resumption. `tls_cert`/`tls_key` default to a fresh trustme CA (see
    `.ca` / `.ca_pem`) whose cert covers DEFAULT_CERT_NAMES, `hostname` and `host`.
    Recipients (addresses or domains) in `reject_recipients` get 550 5.1.1 at RCPT, those in
    `defer_recipients` 450 4.2.0. `auth` = {user: password} turns on AUTH PLAIN/LOGIN (Postfix
    SASL against a small in-process Dovecot-protocol checker), offered only after STARTTLS
    unless `auth_tls_only` is False; with `auth_required` unauthenticated RCPTs get 554 5.7.1
    Access denied. `extra_config` adds or overrides main.cf parameters.
    Needs root: the queue directories are chowned to mail_owner=postfix, and master starts as
    root and drops privileges per service, as in a system install."""
    check_loopback(host)
    require_binary("postfix")
    daemon_dir = subprocess.run(
        [require_binary("postconf"), "-dh", "daemon_directory"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    master = os.path.join(daemon_dir, "master")
    if not os.access(master, os.X_OK):
        raise BinaryMissing(f"Postfix master not found at {master}")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("give both tls_cert and tls_key, or neither")

    port = port or free_port(host)
    owner = pwd.getpwnam("postfix")
    name = f"postfix-{host}-{port}"
    remove: list[Path] = []
    if workdir is None:
        root = scratch_dir() / name
        remove.append(root.parent)
    else:
        base = Path(workdir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        link = base / name
        if link.is_symlink() or link.exists():
            remove_path(link)  # a stale instance (queue files, pid lock) would confuse master
        if searchable_by(base, owner):
            root = link
        else:
            # master opens data_directory files as mail_owner, so every directory above the
            # instance must be searchable by it; pytest's tmp_path (under a 0700 dir) is not.
            # Run from a scratch dir instead, linked from workdir, removed at stop.
            root = scratch_dir() / name
            link.symlink_to(root, target_is_directory=True)
            remove += [link, root.parent]
    etc, spool, data = root / "etc", root / "spool", root / "data"
    for d in (etc, spool, data):
        d.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    os.chown(data, owner.pw_uid, owner.pw_gid)  # master's lock file and tlsmgr's cache live here

    ca: TestCA | None = None
    tls_files: tuple[Path, Path] | None = None
    if tls:
        if tls_cert is None or tls_key is None:
            ca = make_test_ca(root / "tls", extra_names=(hostname, host))
            tls_files = (ca.key_pem, ca.cert_pem)
        else:
            tls_files = (Path(tls_key).resolve(), Path(tls_cert).resolve())

    extra: dict[str, str] = {}
    if auth is not None:
        extra |= {
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": "private/auth",
            "smtpd_tls_auth_only": "yes" if auth_tls_only and tls_files else "no",
        }
        if auth_required:
            extra["smtpd_relay_restrictions"] = "permit_sasl_authenticated, reject"
    extra |= extra_config or {}
    (etc / "main.cf").write_text(
        main_cf(root, hostname, tls_files, max_connections, message_size_limit, extra)
    )
    (etc / "master.cf").write_text(MASTER_CF.format(host=host, port=port))
    (etc / "rcpt_access").write_text(access_map(reject_recipients, defer_recipients))
    # Postfix re-reads a config file that changed within the last second or so, pausing
    # 300 ms per try ("let it cool down"): ~2 s per start. Backdate the files instead.
    cooled = time.time() - 60
    for path in etc.iterdir():
        os.utime(path, (cooled, cooled))

    def fail(what: str, output: str = "") -> LabError:
        log = _tail(root / "maillog")
        if auth_server is not None:
            auth_server.close()
        for path in remove:
            with contextlib.suppress(OSError):
                remove_path(path)
        return LabError(f"Postfix at {host}:{port}: {what}\n{output}\n--- maillog tail ---\n{log}")

    # The queue layout `postfix check` would create (post-install create-missing), made
    # directly: that script takes ~2 s, this a millisecond. Bad settings still surface, as the
    # greeting probe below fails with the maillog attached.
    make_queue_dirs(spool, owner, grp.getgrnam("postdrop").gr_gid)
    auth_server = DovecotAuth(spool / "private" / "auth", auth, owner) if auth else None
    env = {**os.environ, "MAIL_CONFIG": str(etc)}

    # master runs in the foreground (-s keeps stdout for maillog_file=/dev/stdout users) as our
    # child, so stop() knows its pid; it becomes a session leader and its pid is the group id.
    out = open(root / "master.out", "wb")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [master, "-c", str(etc), "-s"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
        )
    finally:
        out.close()
    server = PostfixServer(host, port, root, proc, hostname, ca, [], auth_server)
    try:
        _wait_for_banner(server, ready_timeout)
    except LabError as exc:
        server.stop()
        raise fail(str(exc), _tail(root / "master.out")) from None
    server._remove = remove
    return server


def _wait_for_banner(server: PostfixServer, timeout: float) -> None:
    """Wait for the listener, then for a real 220 greeting: a listening master does not mean
    smtpd can start (a bad main.cf only shows when the first smtpd runs)."""
    host, port = server.host, server.port
    if not _wait_until(
        lambda: server.proc.poll() is not None or _is_listening(host, port), timeout
    ):
        raise LabError(f"master did not listen within {timeout} s")
    if server.proc.poll() is not None:
        raise LabError(f"master exited with status {server.proc.returncode}")
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            greeting = s.makefile("rb").readline()
            if greeting.startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return
    except OSError as exc:
        raise LabError(f"no SMTP greeting: {exc}") from None
    raise LabError(f"no SMTP greeting (got {greeting!r})")
