"""Real SMTP peers on loopback for tests and benches: Postfix smtp-sink, a private Postfix
smtpd instance, and aiosmtpd with a programmable handler.

Plain helpers (no pytest here). Each starter returns a started handle with `.host`, `.port`,
`.stop()`, `.message_count()` and `.wait_for_messages(n)`; every handle is a context manager.
Only 127.0.0.0/8 addresses are accepted: the lab must never touch another network, and the
system resolver here is not on loopback, so nothing below may look a name up.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import grp
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "DEFAULT_CERT_NAMES",
    "AiosmtpdServer",
    "BinaryMissing",
    "LabError",
    "LabServer",
    "PostfixServer",
    "RecordedMessage",
    "RecordingHandler",
    "SmtpSink",
    "TestCA",
    "aiosmtpd_server",
    "check_loopback",
    "find_binary",
    "free_port",
    "make_test_ca",
    "postfix_smtpd",
    "require_binary",
    "smtp_sink",
]

DEFAULT_CERT_NAMES = ("localhost", "127.0.0.1", "mx1.test", "mx2.test", "smtp.test")

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


# ---------------------------------------------------------------------------------------------
# test CA


@dataclass(frozen=True)
class TestCA:
    """A trustme CA and one server certificate, written out as PEM files."""

    __test__ = False  # not a pytest test class, despite the name

    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_pem: Path  # give this to clients as cafile
    cert_pem: Path  # server certificate chain (leaf first)
    key_pem: Path  # server private key
    combined_pem: Path  # key + chain in one file
    names: tuple[str, ...]

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the server certificate (for aiosmtpd)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        return ctx


def make_test_ca(
    workdir: str | os.PathLike[str],
    names: Iterable[str] = DEFAULT_CERT_NAMES,
    *,
    extra_names: Iterable[str] = (),
) -> TestCA:
    """Make a CA and a server cert for `names` (+ `extra_names`); write PEMs into `workdir`.

    Files: ca.pem, server-cert.pem (chain), server-key.pem (0600), server.pem (key + chain)."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    all_names = tuple(dict.fromkeys([*names, *extra_names]))
    ca = trustme.CA(organization_name="mxpress lab CA")
    leaf = ca.issue_cert(*all_names)
    ca_pem, cert_pem, key_pem, combined = (
        wd / "ca.pem",
        wd / "server-cert.pem",
        wd / "server-key.pem",
        wd / "server.pem",
    )
    ca.cert_pem.write_to_path(str(ca_pem))
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    cert_pem.write_bytes(chain)
    key_pem.write_bytes(leaf.private_key_pem.bytes())
    combined.write_bytes(leaf.private_key_pem.bytes() + chain)
    key_pem.chmod(0o600)
    combined.chmod(0o600)
    return TestCA(ca, leaf, ca_pem, cert_pem, key_pem, combined, all_names)


# ---------------------------------------------------------------------------------------------
# Postfix smtp-sink


class SmtpSink(LabServer):
    """A running `smtp-sink`. It throws mail away and counts it.

    Counting: smtp-sink runs with -c, which writes "sess=N quit=N mesg=N" records separated by
    CR to stdout after every session end, QUIT and end-of-data; stdout goes to `count_file`
    and the last complete record is the current count."""

    def __init__(
        self,
        host: str,
        port: int,
        proc: subprocess.Popen[bytes],
        count_file: Path,
        stderr_file: Path,
        tmpdir: Path | None,
    ) -> None:
        self.host, self.port = host, port
        self.proc = proc
        self.count_file = count_file
        self.stderr_file = stderr_file
        self._tmpdir = tmpdir
        self._register()

    def counters(self) -> dict[str, int]:
        """The latest counters: {"sess": sessions, "quit": QUITs, "mesg": messages}."""
        try:
            with open(self.count_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256))
                tail = f.read()
        except OSError:
            return {"sess": 0, "quit": 0, "mesg": 0}
        # Only records followed by CR are complete; the writer may be mid-record.
        records = tail.split(b"\r")[:-1]
        for record in reversed(records):
            fields = dict(item.split(b"=", 1) for item in record.split() if b"=" in item)
            try:
                return {k.decode(): int(v) for k, v in fields.items()}
            except ValueError:
                continue
        return {"sess": 0, "quit": 0, "mesg": 0}

    def message_count(self) -> int:
        return self.counters().get("mesg", 0)

    def session_count(self) -> int:
        return self.counters().get("sess", 0)

    def stop(self) -> None:
        _terminate(self.proc)
        self._unregister()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def smtp_sink(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    count_file: str | os.PathLike[str] | None = None,
    hostname: str | None = None,
    backlog: int = 1024,
    extra_args: Iterable[str] = (),
    ready_timeout: float = 10.0,
) -> SmtpSink:
    """Start Postfix `smtp-sink` on host:port (port 0: pick a free one) and wait until it listens.

    It advertises PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, DSN, XCLIENT/XFORWARD and a fake
    AUTH PLAIN LOGIN (it answers any AUTH with 250, not 235; "-a" hides it), and not CHUNKING
    (BDAT gets "500 5.5.1 unknown command"). Its EHLO reply ends with an empty "250 " line.
    `extra_args` go to smtp-sink before the address, e.g. ("-p",) to drop PIPELINING, ("-r",
    "RCPT") to 4xx every RCPT, ("-Q", "DATA") to send 421 and hang up at DATA. `count_file`
    keeps the counter output (a temp file if None)."""
    check_loopback(host)
    binary = require_binary("smtp-sink")
    tmpdir = Path(tempfile.mkdtemp(prefix="mxpress-sink-"))
    counts = Path(count_file) if count_file is not None else tmpdir / "counts"
    stderr_path = tmpdir / "stderr"
    attempts = 3 if port == 0 else 1
    for attempt in range(attempts):
        chosen = port or free_port(host)
        argv = [binary, "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep running as root
        if hostname:
            argv += ["-h", hostname]
        argv += [*extra_args, f"{host}:{chosen}", str(backlog)]
        with open(counts, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        if (
            _wait_until(
                lambda: proc.poll() is not None or _is_listening(host, chosen),  # noqa: B023
                ready_timeout,
            )
            and proc.poll() is None
        ):
            return SmtpSink(host, chosen, proc, counts, stderr_path, tmpdir)
        _terminate(proc)
        error = _tail(stderr_path)
        if attempt + 1 < attempts and "in use" in error.lower():
            continue  # lost the race for the free port; pick another
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise LabError(
            f"smtp-sink {' '.join(argv)} did not start listening: {error or 'no output'}"
        )
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Postfix smtpd: a private instance


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


# ---------------------------------------------------------------------------------------------
# aiosmtpd: a programmable receiver for fault injection


@dataclass
class RecordedMessage:
    """One accepted transaction as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)
    peer: Any = None
    helo: str | None = None
    tls: bool = False
    auth_login: str | None = None


class RecordingHandler:
    """An aiosmtpd handler that records envelopes and replies as programmed.

    - rcpt_replies: {address (case-insensitive): "450 4.2.1 busy"} replaces the 250 for that
      RCPT; the address is then not part of the envelope.
    - mail_reply: reply to every MAIL FROM instead of 250 (e.g. "421 4.3.2 shutting down").
    - data_reply: reply at end of data instead of 250 (the message is then not recorded).
    - drop_on: commands ("MAIL", "RCPT", "DATA" = at end of data) after which the connection
      is cut without a reply; with `drop_with_reset` the client sees a TCP RST, else a FIN.
    - delays: {command: seconds} to wait before replying, for timeout tests.
    All attributes may be changed while the server runs."""

    def __init__(
        self,
        *,
        rcpt_replies: Mapping[str, str] | None = None,
        mail_reply: str | None = None,
        data_reply: str | None = None,
        drop_on: Iterable[str] = (),
        drop_with_reset: bool = False,
        delays: Mapping[str, float] | None = None,
    ) -> None:
        self.rcpt_replies: dict[str, str] = dict(rcpt_replies or {})
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.drop_on: set[str] = set(drop_on)
        self.drop_with_reset = drop_with_reset
        self.delays: dict[str, float] = dict(delays or {})
        self.messages: list[RecordedMessage] = []
        self.rcpt_attempts: list[str] = []  # every RCPT address seen, accepted or not
        self._cond = threading.Condition()

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.rcpt_attempts.clear()

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[RecordedMessage]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise LabError(
                    f"expected {n} messages within {timeout} s, got {len(self.messages)}"
                )
            return list(self.messages)

    async def _before(self, command: str, server: SMTP) -> bool:
        """Apply delay; return True if the connection was dropped instead of replying."""
        # Case-insensitive keys, normalized here because tests may reassign these attributes.
        delay = {k.upper(): v for k, v in self.delays.items()}.get(command)
        if delay:
            await asyncio.sleep(delay)
        if command in {c.upper() for c in self.drop_on}:
            if server.transport is not None:
                transport = cast(asyncio.Transport, server.transport)
                sock = transport.get_extra_info("socket")
                if self.drop_with_reset and sock is not None:
                    # linger 0: closing sends an RST instead of a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # abort() marks the transport lost at once, so aiosmtpd's reply is discarded.
                transport.abort()
            return True
        return False

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if await self._before("MAIL", server):
            return "421 4.4.2 dropped (lab)"
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self._cond:
            self.rcpt_attempts.append(address)
        if await self._before("RCPT", server):
            return "421 4.4.2 dropped (lab)"
        reply = {k.lower(): v for k, v in self.rcpt_replies.items()}.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if await self._before("DATA", server):
            return "421 4.4.2 dropped (lab)"
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        login = session.auth_data if isinstance(session.auth_data, str) else None
        message = RecordedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            content=content,
            mail_options=list(envelope.mail_options),
            rcpt_options=list(envelope.rcpt_options),
            peer=session.peer,
            helo=session.host_name,
            tls=session.ssl is not None,
            auth_login=login,
        )
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()
        return "250 2.0.0 OK: queued (lab)"


class _LabController(Controller):
    """Controller that supports port 0 and counts connections."""

    connections = 0

    def factory(self) -> SMTP:
        # aiosmtpd builds one SMTP protocol object per accepted connection.
        self.connections += 1
        smtp: SMTP = super().factory()  # type: ignore[no-untyped-call]
        return smtp

    def _trigger_server(self) -> None:
        # Runs once the listener exists: the place to learn which port 0 became.
        if self.port == 0 and self.server is not None:
            self.port = cast(asyncio.Server, self.server).sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class AiosmtpdServer(LabServer):
    """A running aiosmtpd Controller (its own thread and event loop)."""

    def __init__(self, controller: _LabController, handler: Any) -> None:
        self.controller = controller
        self.handler = handler
        self.host, self.port = controller.hostname, controller.port
        self._running = True
        self._register()

    @property
    def connections(self) -> int:
        """Connections accepted since start (the readiness probe is not counted)."""
        return self.controller.connections

    def message_count(self) -> int:
        messages = getattr(self.handler, "messages", None)
        return len(messages) if messages is not None else 0

    def stop(self) -> None:
        if self._running:
            self._running = False
            self.controller.stop()
        self._unregister()


def aiosmtpd_server(
    handler: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    implicit_tls: bool = False,
    auth: Mapping[str, str] | None = None,
    auth_required: bool = False,
    auth_require_tls: bool = True,
    hostname: str = "smtp.test",
    **smtp_kwargs: Any,
) -> AiosmtpdServer:
    """Start aiosmtpd on host:port (0: any free port) with `handler` (a RecordingHandler if None).

    `tls_context` (e.g. TestCA.server_context()) enables STARTTLS, or with `implicit_tls` TLS
    from the first byte. `auth` = {user: password} enables AUTH PLAIN/LOGIN checked against it;
    by aiosmtpd's default AUTH is only offered after STARTTLS (`auth_require_tls`).
    Other keywords go to aiosmtpd.smtp.SMTP (e.g. data_size_limit, timeout)."""
    check_loopback(host)
    if handler is None:
        handler = RecordingHandler()
    kwargs: dict[str, Any] = dict(smtp_kwargs)
    if tls_context is not None and not implicit_tls:
        kwargs["tls_context"] = tls_context
        kwargs["require_starttls"] = require_starttls
    if auth is not None:
        users = dict(auth)

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            if isinstance(data, LoginPassword):
                login = data.login.decode("utf-8", "replace")
                if users.get(login) == data.password.decode("utf-8", "replace"):
                    return AuthResult(success=True, auth_data=login)
            return AuthResult(success=False, handled=False)

        kwargs |= {
            "authenticator": authenticator,
            "auth_required": auth_required,
            "auth_require_tls": auth_require_tls,
        }
    controller = _LabController(
        handler,
        hostname=host,
        port=port,
        server_hostname=hostname,
        ssl_context=tls_context if implicit_tls else None,
        **kwargs,
    )
    controller.start()
    controller.connections = 0  # forget the readiness probe
    return AiosmtpdServer(controller, handler)
