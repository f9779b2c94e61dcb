"""A minimal Dovecot auth server for the Postfix lab (`smtpd_sasl_type = dovecot`)."""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import socket
import threading
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DovecotAuth"]


class DovecotAuth:
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
