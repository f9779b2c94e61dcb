"""The SMTP submission listener (RFC 6409): mail from applications into the queue.

    server = SubmissionServer(queue_accept, port=587, tls_context=ctx,
                              users={"app": hash_password("...")})
    await server.start()
    ...
    await server.stop(grace=30)   # on SIGTERM

Rules (docs/submission.md):
- Never an open relay: MAIL is accepted only from an authenticated session or a peer in
  `trusted_networks` (empty by default; 0.0.0.0/0 is refused). Others get 530.
- AUTH PLAIN/LOGIN only over TLS (STARTTLS or implicit TLS), against scrypt hashes.
- SIZE is announced and enforced; the header section is checked (CRLF only, no NUL, one
  From); the 250 after DATA is sent only once `accept` returned, i.e. after the queue's
  fsync. If `accept` raises, the client gets 451 and nothing was stored.

It runs in the caller's event loop (asyncio `create_server`; one
`server.connection.SubmissionConnection` per client, driving the sans-IO state machine of
`protocol.server`): the relay is one loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Self

from mxpress.errors import ConfigError
from mxpress.protocol.server_checks import RejectReason
from mxpress.protocol.server_events import ServerConfig
from mxpress.security.passwords import ScryptHash, parse_hash, verify_password
from mxpress.server.balance import Balancer
from mxpress.server.connection import SubmissionConnection, Transaction

logger = logging.getLogger(__name__)
_TRUST_CACHE = 4096  # peers whose trusted-network answer is remembered

DEFAULT_MAX_MESSAGE_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_HEADER_SIZE = 256 * 1024
# Checked when the user is unknown, so that the reply takes as long as for a known user
# and does not tell which user names exist. (Random bytes: no password matches.)
_DUMMY_HASH = (
    "scrypt$n=16384,r=8,p=1$k9AqLjKZqJ0X9m4fK8e0nQ==$Vq1x3o0tq9m8Y0m1yN2o1c0hZb5Q3p9h4s0Yx1V8c2E="
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Arriving = asyncio.Task[tuple[asyncio.Transport, SubmissionConnection]]


@dataclass(frozen=True, slots=True)
class Submission:
    """One accepted message, handed to `accept` (which stores it and returns its id)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes  # as received after dot-unstuffing: CRLF line ends
    auth_user: str | None  # None: relayed because the peer is in trusted_networks
    peer: str  # the client's IP address
    tls: bool
    helo: str
    smtputf8: bool = False  # MAIL FROM had SMTPUTF8: delivery needs it too


Accept = Callable[[Submission], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class SubmissionStats:
    """A snapshot of the listener's counters since start()."""

    connections: int = 0  # TCP connections served here (accepted, or taken in)
    active: int = 0  # open now
    passed_on: int = 0  # accepted, then passed to another worker (server/balance.py)
    taken_in: int = 0  # passed here by another worker
    messages: int = 0  # stored by the queue (accept returned)
    rejected: Mapping[str, int] = field(default_factory=dict)  # RejectReason -> count


def _parse_networks(networks: Sequence[str]) -> tuple[Network, ...]:
    parsed = []
    for text in networks:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ConfigError(
                f"trusted network {text!r} is not a network ({exc}); write e.g. 10.0.0.0/8"
            ) from None
        if net.prefixlen == 0:
            raise ConfigError(
                f"trusted network {text!r} covers every address: that is an open relay; "
                "list the networks of your applications, or use AUTH"
            )
        parsed.append(net)
    return tuple(parsed)


def _parse_users(users: Mapping[str, str]) -> dict[str, ScryptHash]:
    parsed = {}
    for user, stored in users.items():
        if not user or not user.isprintable():
            raise ConfigError(f"submission user name {user!r} must be non-empty and printable")
        try:
            parsed[user] = parse_hash(stored)
        except ConfigError as exc:
            raise ConfigError(f"password of submission user {user!r}: {exc}") from None
    return parsed


class SubmissionServer:
    """The submission listener. One object per listening address; see the module doc."""

    def __init__(
        self,
        accept: Accept,
        *,
        host: str = "127.0.0.1",
        port: int = 587,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        users: Mapping[str, str] | None = None,
        trusted_networks: Sequence[str] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_recipients: int = 1000,
        hostname: str | None = None,
        require_tls_for_auth: bool = True,
        max_auth_failures: int = 3,
        max_concurrent_auth: int = 2,
        timeout: float = 300.0,
        sock: socket.socket | None = None,
        balance: Balancer | None = None,
    ) -> None:
        """sock: a listening socket to serve on instead of binding host:port (the relay's
        workers share one, made by the supervisor). balance: pass new connections to
        the worker holding the fewest (server/balance.py); not with implicit TLS, whose
        handshake comes before anything could be passed on."""
        if implicit_tls and tls_context is None:
            raise ConfigError("implicit_tls needs a tls_context (certificate and key)")
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_header_size", max_header_size),
            ("max_recipients", max_recipients),
            ("max_auth_failures", max_auth_failures),
            ("max_concurrent_auth", max_concurrent_auth),
        ):
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a whole number, at least 1, not {value!r}")
        if isinstance(trusted_networks, str):
            raise ConfigError("trusted_networks is a list of networks, not one string")
        self._accept = accept
        self.host = host
        self._port = port
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self._users = _parse_users(users or {})
        self._trusted = _parse_networks(trusted_networks)
        self._trust_cache: dict[str, bool] = {}
        self.max_message_size = max_message_size
        self.max_header_size = min(max_header_size, max_message_size)
        self.max_recipients = max_recipients
        self.hostname = hostname or socket.gethostname()  # not getfqdn(): no DNS at start
        try:
            self._config = ServerConfig(
                hostname=self.hostname,
                max_message_size=max_message_size,
                max_header_size=self.max_header_size,
                max_recipients=max_recipients,
                starttls=tls_context is not None and not implicit_tls,
                auth_mechanisms=("LOGIN", "PLAIN") if users else (),
                auth_requires_tls=require_tls_for_auth,
            )
        except ValueError as exc:
            raise ConfigError(f"submission listener: {exc}") from None
        self.require_tls_for_auth = require_tls_for_auth
        self.max_auth_failures = max_auth_failures
        self.timeout = timeout
        self._sock = sock
        self._balance = None if implicit_tls else balance
        self._arrivals: set[SubmissionConnection] = set()  # passed here: never passed again
        self._unopened = 0  # connections made (accepted), not yet opened
        self._arriving: set[_Arriving] = set()
        # scrypt takes 16 MiB and ~50 ms a try: bound how many run at once.
        self._auth_slots = asyncio.Semaphore(max_concurrent_auth)
        self._dummy = parse_hash(_DUMMY_HASH)
        if self._users:  # cost like a real user's hash, or the timing tells anyway
            first = next(iter(self._users.values()))
            self._dummy = replace(self._dummy, n=first.n, r=first.r, p=first.p)
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._connections: set[SubmissionConnection] = set()
        self._accepting: set[asyncio.Future[str]] = set()
        self._drained = asyncio.Event()
        self._connection_count = 0
        self._messages = 0
        self._rejected: Counter[str] = Counter()
        self._loop_sets_nodelay: bool | None = None  # learnt from the first connection

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("SubmissionServer.start() called twice")
        if self._balance is not None:
            await self._balance.join(self._arrived)
        loop = asyncio.get_running_loop()
        tls = self.tls_context if self.implicit_tls else None
        if self._sock is not None:
            self._server = await loop.create_server(self._new_connection, sock=self._sock, ssl=tls)
            self.host = self._sock.getsockname()[0]
        else:
            self._server = await loop.create_server(
                self._new_connection, self.host, self._port, ssl=tls
            )
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("submission: listening on %s:%d", self.host, self._port)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; let open transactions finish (up to `grace` s); then close.

        Idle connections get "421 4.3.2" at once; a connection inside a transaction gets
        it after its DATA reply (or RSET). What is still open after `grace` is cut.
        """
        if self._server is None or self._stopping:
            return
        self._stopping = True
        if self._balance is not None:
            self._balance.stop()
        self._server.close()  # the listening socket: new connections are refused
        for conn in list(self._connections):
            conn.close_if_idle()
        self._check_drained()
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            logger.warning(
                "submission: %d connections still busy after %.1f s; closing them",
                len(self._connections),
                grace,
            )
            for conn in list(self._connections):
                conn.abort()
            for future in list(self._accepting):
                future.cancel()
        await self._server.wait_closed()

    def _new_connection(self) -> SubmissionConnection:
        """The protocol of a connection accepted here."""
        if self._balance is not None:
            # Counted from here, not from opened(): uvloop makes the protocols of all the
            # connections waiting in one go, and only then opens them, while the other
            # worker reads the board.
            self._count_unopened()
        return self._connection()

    def _connection(self) -> SubmissionConnection:
        return SubmissionConnection(
            self,
            self._config,
            starttls=None if self.implicit_tls else self.tls_context,
            implicit_tls=self.implicit_tls,
        )

    def _count_unopened(self) -> None:
        self._unopened += 1
        self._publish_held()

    def _publish_held(self) -> None:
        """Tell the other workers how many connections this one holds (see balance.py)."""
        assert self._balance is not None
        self._balance.held(len(self._connections) + self._unopened)

    def _arrived(self, sock: socket.socket) -> None:
        """A connection another worker accepted and passed here, not yet greeted."""
        self._count_unopened()  # before the board says it is no longer on its way

        def new_connection() -> SubmissionConnection:
            conn = self._connection()
            self._arrivals.add(conn)
            return conn

        loop = asyncio.get_running_loop()
        future = loop.create_task(loop.connect_accepted_socket(new_connection, sock))
        self._arriving.add(future)
        future.add_done_callback(self._arrival_done)

    def _arrival_done(self, future: _Arriving) -> None:
        self._arriving.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            logger.warning("submission: a connection passed here failed: %s", exc)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one after start() with port=0)."""
        return self._port

    @property
    def stats(self) -> SubmissionStats:
        balance = self._balance
        return SubmissionStats(
            connections=self._connection_count,
            active=len(self._connections),
            passed_on=balance.passed if balance is not None else 0,
            taken_in=balance.taken if balance is not None else 0,
            messages=self._messages,
            rejected=dict(self._rejected),
        )

    # --- what connections ask (server.connection.Listener) -------------------------------

    @property
    def auth_enabled(self) -> bool:
        return bool(self._users)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def is_trusted(self, peer: str) -> bool:
        # Asked once per connection; parsing the address was ~1% of the relay's main
        # thread with a connection per message. The answer per peer never changes.
        known = self._trust_cache.get(peer)
        if known is None:
            if len(self._trust_cache) >= _TRUST_CACHE:
                self._trust_cache.clear()
            known = self._trust_cache[peer] = self._check_trusted(peer)
        return known

    def _check_trusted(self, peer: str) -> bool:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
        return any(addr in net for net in self._trusted)

    async def check_login(self, login: bytes, password: bytes) -> str | None:
        """The user name if the password is right, else None. Runs scrypt in a thread."""
        try:
            user = login.decode("utf-8")
        except UnicodeDecodeError:
            user = ""
        stored = self._users.get(user)
        async with self._auth_slots:
            ok = await asyncio.to_thread(verify_password, password, stored or self._dummy)
        return user if ok and stored is not None else None

    def deliver(self, transaction: Transaction) -> asyncio.Future[str]:
        """Hand a checked message to `accept`; the future's result is its queue id."""
        submission = Submission(
            sender=transaction.sender,
            recipients=transaction.recipients,
            data=transaction.data,
            auth_user=transaction.auth_user,
            peer=transaction.peer,
            tls=transaction.tls,
            helo=transaction.helo,
            smtputf8=transaction.smtputf8,
        )
        # The listener's task, not the connection's: if the client goes away mid-fsync the
        # store still finishes cleanly (the client will retry; RFC 5321 §6.1 accepts the
        # duplicate), and stop() waits for it.
        future = asyncio.ensure_future(self._accept(submission))
        self._accepting.add(future)
        future.add_done_callback(self._accept_done)
        return future

    def _accept_done(self, future: asyncio.Future[str]) -> None:
        self._accepting.discard(future)
        # Counted here, not at the 250: a client that hung up mid-fsync still got stored.
        if not future.cancelled() and future.exception() is None:
            self._messages += 1
        self._check_drained()

    def count(self, reason: RejectReason) -> None:
        self._rejected[reason.value] += 1

    def ensure_nodelay(self, transport: asyncio.BaseTransport) -> None:
        """Replies are small writes: without TCP_NODELAY one may wait ~40 ms for a delayed
        ACK. uvloop and asyncio set it on TCP sockets themselves; checked once, on the
        first connection, so that the others skip three socket calls each (~2% of the
        relay's CPU with a connection per message)."""
        if self._loop_sets_nodelay:
            return
        sock = transport.get_extra_info("socket")
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        if self._loop_sets_nodelay is None:
            self._loop_sets_nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            if self._loop_sets_nodelay:
                return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def opened(self, conn: SubmissionConnection) -> None:
        balance = self._balance
        if balance is not None:
            now = time.monotonic()
            self._unopened = max(self._unopened - 1, 0)
            if conn in self._arrivals:
                self._arrivals.discard(conn)
            elif not self._stopping and self._passed_on(balance, conn, now):
                self._publish_held()
                return
            conn.opened_at = now
        self._connection_count += 1
        self._connections.add(conn)
        if balance is not None:
            self._publish_held()
        if self._stopping:  # accepted just before the socket closed
            conn.close_if_idle()

    def _passed_on(self, balance: Balancer, conn: SubmissionConnection, now: float) -> bool:
        """Before the greeting: hand the connection to a less busy worker if there is
        one (then this copy of the socket is closed; the other worker's stays open)."""
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        holding = len(self._connections) + self._unopened + 1
        if sock is None or not balance.pass_on(sock, holding, now):
            return False
        conn.abort()
        return True

    def closed(self, conn: SubmissionConnection) -> None:
        balance = self._balance
        if balance is not None and conn in self._connections:
            now = time.monotonic()
            balance.lasted(now - conn.opened_at, now)
        self._connections.discard(conn)
        if balance is not None:
            self._arrivals.discard(conn)
            if not self._connections:
                # A protocol made but never opened (the loop failed the accept) would
                # stay counted: it goes when nothing is held.
                self._unopened = 0
            self._publish_held()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._stopping and not self._connections and not self._accepting:
            self._drained.set()
