"""The files of a private Postfix instance: master.cf, main.cf, the recipient access map,
and a queue directory laid out as postfix(1) expects it (modes and owners)."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "MASTER_CF",
    "access_map",
    "main_cf",
    "make_queue_dirs",
    "remove_path",
    "scratch_dir",
    "searchable_by",
]

MASTER_CF = """\
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


# queue subdirectory -> (mode, group is setgid_group); all are owned by mail_owner
_PRIVATE_DIRS = (
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "private",
    "saved",
    "trace",
)
_QUEUE_DIRS = {name: (0o700, False) for name in _PRIVATE_DIRS} | {
    "maildrop": (0o730, True),
    "public": (0o710, True),
}


def make_queue_dirs(spool: Path, owner: pwd.struct_passwd, setgid_gid: int) -> None:
    (spool / "pid").mkdir(mode=0o755, exist_ok=True)  # root-owned: master.pid
    for name, (mode, setgid_group) in _QUEUE_DIRS.items():
        d = spool / name
        d.mkdir(exist_ok=True)
        d.chmod(mode)
        os.chown(d, owner.pw_uid, setgid_gid if setgid_group else owner.pw_gid)


def scratch_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mxpress-postfix-"))
    d.chmod(0o755)  # mkdtemp makes it 0700; mail_owner must be able to search it
    return d


def remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def searchable_by(path: Path, user: pwd.struct_passwd) -> bool:
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


def access_map(reject: Iterable[str], defer: Iterable[str]) -> str:
    lines = ["# recipient -> action (access(5)); keys may be addresses or domains"]
    for key in reject:
        lines.append(f"{key} 550 5.1.1 user unknown (lab)")
    for key in defer:
        lines.append(f"{key} 450 4.2.0 try again later (lab)")
    return "\n".join(lines) + "\n"


def main_cf(
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
