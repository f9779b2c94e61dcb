"""A private Postfix smtpd instance on loopback (its own master, config and queue) that
discards mail by default, with optional STARTTLS (test CA) and AUTH (an in-process
Dovecot-protocol checker)."""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
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

__all__ = ["PostfixServer", "postfix_smtpd"]

_MASTER_CF = """\
# A private Postfix instance for the mxpress lab: what smtpd needs, with discard (default) or
# smtp delivery (as a relay, for benchmarks).
# chroot is off (column 5) so no files need copying into the queue directory.
{host}:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


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
        auth: _DovecotAuth | None = None,
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
                _remove(path)
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


# queue subdirectory -> (mode, group is setgid_group); all are owned by mail_owner
_QUEUE_DIRS = {
    "active": (0o700, False),
    "bounce": (0o700, False),
    "corrupt": (0o700, False),
    "defer": (0o700, False),
    "deferred": (0o700, False),
    "flush": (0o700, False),
    "hold": (0o700, False),
    "incoming": (0o700, False),
    "private": (0o700, False),
    "saved": (0o700, False),
    "trace": (0o700, False),
    "maildrop": (0o730, True),
    "public": (0o710, True),
}


def _make_queue_dirs(spool: Path, owner: pwd.struct_passwd, setgid_gid: int) -> None:
    (spool / "pid").mkdir(mode=0o755, exist_ok=True)  # root-owned: master.pid
    for name, (mode, setgid_group) in _QUEUE_DIRS.items():
        d = spool / name
        d.mkdir(exist_ok=True)
        d.chmod(mode)
        os.chown(d, owner.pw_uid, setgid_gid if setgid_group else owner.pw_gid)


def _scratch_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mxpress-postfix-"))
    d.chmod(0o755)  # mkdtemp makes it 0700; mail_owner must be able to search it
    return d


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _searchable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """True if `user` may search (x) every directory from / down to `path`."""
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for d in (path, *path.parents):
        st = d.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class _DovecotAuth:
    """A minimal Dovecot auth server (protocol 1.x) on a UNIX socket, checking PLAIN and LOGIN
    against a dict. Neither Dovecot nor Cyrus's sasldb tools are installed, and this is all
    Postfix's `smtpd_sasl_type = dovecot` needs; the SMTP side of AUTH stays real Postfix.
    Runs in threads of this process; `attempts` records (user, accepted)."""

    def __init__(self, path: Path, users: Mapping[str, str], owner: pwd.struct_passwd) -> None:
        self.path = path
        self.users = dict(users)
        self.attempts: list[tuple[str, bool]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        os.chown(path, owner.pw_uid, owner.pw_gid)  # smtpd connects as mail_owner
        path.chmod(0o660)
        self._sock.listen(16)
        threading.Thread(target=self._accept, name="lab-dovecot-auth", daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by close()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _check(self, user: str, password: str) -> str:
        ok = self.users.get(user) == password
        self.attempts.append((user, ok))
        return "OK" if ok else "FAIL"

    def _serve(self, conn: socket.socket) -> None:
        cookie = os.urandom(16).hex().encode()
        with conn, conn.makefile("rb") as f:
            conn.sendall(
                b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\n"
                b"SPID\t%d\nCUID\t1\nCOOKIE\t%s\nDONE\n" % (os.getpid(), cookie)
            )
            pending: dict[str, list[str]] = {}  # request id -> [mechanism, decoded client steps]
            for raw in f:
                fields = raw.rstrip(b"\n").decode("utf-8", "replace").split("\t")
                if fields[0] == "AUTH" and len(fields) >= 3:
                    rid = fields[1]
                    pending[rid] = [fields[2].upper()]
                    params = dict(p.partition("=")[::2] for p in fields[3:])
                    data = params.get("resp")  # initial response, if the client sent one
                elif fields[0] == "CONT" and len(fields) >= 2 and fields[1] in pending:
                    rid = fields[1]
                    data = fields[2] if len(fields) > 2 else ""
                else:
                    continue  # VERSION, CPID: nothing to answer
                steps = pending[rid]
                if data is not None:
                    steps.append(base64.b64decode(data).decode("utf-8", "replace"))
                verb, arg = self._step(steps)
                if verb != "CONT":
                    del pending[rid]
                conn.sendall(f"{verb}\t{rid}\t{arg}\n".encode())

    def _step(self, steps: list[str]) -> tuple[str, str]:
        """The reply to a request so far: ("CONT", base64 challenge) or ("OK"/"FAIL", args)."""
        mech, answers = steps[0], steps[1:]
        if mech == "PLAIN" and answers:
            _, user, password = [*answers[0].split("\0"), "", ""][:3]  # authzid, authcid, pw
        elif mech == "PLAIN":
            return "CONT", ""
        elif mech == "LOGIN" and len(answers) == 2:
            user, password = answers
        elif mech == "LOGIN":
            prompt = b"Username:" if not answers else b"Password:"
            return "CONT", base64.b64encode(prompt).decode()
        else:
            return "FAIL", "reason=unsupported mechanism"
        return self._check(user, password), f"user={user}"


def _access_map(reject: Iterable[str], defer: Iterable[str]) -> str:
    lines = ["# recipient -> action (access(5)); keys may be addresses or domains"]
    for key in reject:
        lines.append(f"{key} 550 5.1.1 user unknown (lab)")
    for key in defer:
        lines.append(f"{key} 450 4.2.0 try again later (lab)")
    return "\n".join(lines) + "\n"


def _main_cf(
    root: Path,
    hostname: str,
    tls_files: tuple[Path, Path] | None,
    max_connections: int,
    message_size_limit: int,
    extra: Mapping[str, str],
) -> str:
    domain = hostname.split(".", 1)[1] if "." in hostname else "test"
    params: dict[str, str] = {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "spool"),
        "data_directory": str(root / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        # Names are set explicitly so Postfix never asks the resolver (it is off-loopback).
        "myhostname": hostname,
        "mydomain": domain,
        "myorigin": "$myhostname",
        # Postfix only accepts addresses that are configured on an interface here, and lo
        # has just 127.0.0.1; the smtpd listener's own address comes from master.cf, which
        # may be any 127.x.y.z.
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "smtpd_peername_lookup": "no",
        "smtp_dns_support_level": "disabled",
        # No local or relay domains: every recipient goes to the discard transport.
        "mydestination": "",
        "relay_domains": "",
        "local_recipient_maps": "",
        "alias_maps": "",
        "alias_database": "",
        "mynetworks": "127.0.0.0/8",
        "default_transport": "discard:lab",
        "relay_transport": "discard:lab",
        "local_transport": "discard:lab",
        # Postfix insists on a relay restriction that can reject; loopback clients pass it.
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtpd_recipient_restrictions": (
            f"check_recipient_access texthash:{root / 'etc' / 'rcpt_access'}, permit"
        ),
        # Defaults tuned against abusive clients would slow benches: no tarpit after errors,
        # no inflow throttling, generous limits.
        "smtpd_error_sleep_time": "0",
        "smtpd_soft_error_limit": "1000",
        "smtpd_hard_error_limit": "10000",
        "smtpd_junk_command_limit": "10000",
        "smtpd_recipient_limit": "10000",
        "in_flow_delay": "0",
        "default_process_limit": str(max_connections),
        "message_size_limit": str(message_size_limit),
        "smtpd_banner": "$myhostname ESMTP Postfix (mxpress lab)",
        "biff": "no",
        "append_dot_mydomain": "no",
        "maillog_file": str(root / "maillog"),
        # maillog_file must start with one of these prefixes (default: /var, /dev/stdout).
        "maillog_file_prefixes": str(root),
    }
    if tls_files is not None:
        key, chain = tls_files
        params |= {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_chain_files": f"{key}, {chain}",
            # Session IDs for TLS <= 1.2 clients without tickets; tickets (keys from tlsmgr)
            # cover the rest, TLS 1.3 included.
            "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
            "smtpd_tls_session_cache_timeout": "3600s",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
        }
    params |= dict(extra)
    return "".join(f"{k} = {v}\n" for k, v in params.items())


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
        root = _scratch_dir() / name
        remove.append(root.parent)
    else:
        base = Path(workdir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        link = base / name
        if link.is_symlink() or link.exists():
            _remove(link)  # a stale instance (queue files, pid lock) would confuse master
        if _searchable_by(base, owner):
            root = link
        else:
            # master opens data_directory files as mail_owner, so every directory above the
            # instance must be searchable by it; pytest's tmp_path (under a 0700 dir) is not.
            # Run from a scratch dir instead, linked from workdir, removed at stop.
            root = _scratch_dir() / name
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
        _main_cf(root, hostname, tls_files, max_connections, message_size_limit, extra)
    )
    (etc / "master.cf").write_text(_MASTER_CF.format(host=host, port=port))
    (etc / "rcpt_access").write_text(_access_map(reject_recipients, defer_recipients))
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
                _remove(path)
        return LabError(f"Postfix at {host}:{port}: {what}\n{output}\n--- maillog tail ---\n{log}")

    # The queue layout `postfix check` would create (post-install create-missing), made
    # directly: that script takes ~2 s, this a millisecond. Bad settings still surface, as the
    # greeting probe below fails with the maillog attached.
    _make_queue_dirs(spool, owner, grp.getgrnam("postdrop").gr_gid)
    auth_server = _DovecotAuth(spool / "private" / "auth", auth, owner) if auth else None
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
