"""The relay service: submission (SMTP + HTTP) → durable queue → scheduler → Mailer.

Built from `Settings` by `build_relay` (the composition root for `mxpress serve`); every
part is created here and passed to the parts that use it, including the observability:
one Prometheus registry per relay (served at the HTTP API's /metrics), the delivery log,
the queue depth counter and the on-demand profiler (docs/observability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry

from mxpress.config import Settings, parse_listen
from mxpress.delivery.result import SendResult
from mxpress.delivery.scheduler import Observer, Scheduler
from mxpress.dns.resolver import Resolver
from mxpress.errors import ConfigError
from mxpress.mailer import Mailer
from mxpress.observe.delivery_log import DeliveryLog
from mxpress.observe.metrics import RelayMetrics
from mxpress.observe.profiler import Profiler
from mxpress.observe.queue_depth import QueueDepth
from mxpress.observe.worker_metrics import MetricsFileWriter, merged_exposition, metrics_file
from mxpress.queue.retry import RetryPolicy
from mxpress.queue.sharded import ShardedQueue, shard_path, shards
from mxpress.queue.sqlite import SQLiteQueue
from mxpress.queue.store import AttemptOutcome, NewMessage, QueuedMessage
from mxpress.server.balance import Balancer, HandoffFds
from mxpress.server.submission import Submission, SubmissionServer

logger = logging.getLogger(__name__)


class DateField:
    """An RFC 5322 date-time of now, formatted once a second: formatdate() was ~2% of
    the relay's main thread under load, once per message."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall clock: it is a date, not a duration
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(self._clock())
        if second != self._second:
            self._second, self._text = second, formatdate(second, localtime=True)
        return self._text


@dataclass
class Relay:
    settings: Settings
    store: SQLiteQueue
    mailer: Mailer
    scheduler: Scheduler
    submission: SubmissionServer | None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: RelayMetrics | None = None
    delivery_log: DeliveryLog | None = None
    queue_depth: QueueDepth | None = None
    profiler: Profiler = field(default_factory=Profiler)
    http_app: Any = None
    http: Any = None  # the running HTTP server handle
    profile_http: Any = None  # the --profile-port listener's handle, when on
    started_at: float = field(default_factory=time.monotonic)
    worker: int = 0  # which of settings.server.workers this process is
    view: ShardedQueue | None = None  # every worker's queue file (worker 0, when several)
    metrics_file: MetricsFileWriter | None = None  # workers > 0: metrics for worker 0
    _lock: IO[bytes] | None = None
    _date: DateField = field(default_factory=DateField)

    async def start(self) -> None:
        name = "relay.lock" if self.worker == 0 else f"relay.{self.worker}.lock"
        # A worker may follow one of a previous run that is still exiting: wait a little.
        wait = 10.0 if self.settings.server.workers > 1 else 0.0
        self._lock = await _hold_lock(self.settings.data_path / name, wait)
        try:
            if self.worker == 0:
                await _refuse_orphaned_shards(self.settings.data_path, self.settings.server.workers)
        except BaseException:
            self._lock.close()  # nothing started: let the next attempt have the file
            self._lock = None
            raise
        await self.store.open()
        if self.view is not None:
            await self.view.open()
        reclaimed = await self.store.reclaim_leases()
        if reclaimed:
            logger.warning(
                "%d messages were being delivered when the last run stopped; delivering them again",
                reclaimed,
            )
        if self.delivery_log is not None:
            self.delivery_log.start()
        if self.queue_depth is not None:
            self.queue_depth.start()
        if self.metrics_file is not None:
            self.metrics_file.start()
        self.scheduler.start()
        if self.submission is not None:
            await self.submission.start()
        if self.http_app is not None:
            from mxpress.server.http import serve_http

            host, port = parse_listen(self.settings.http.listen, "http.listen")
            self.http = await serve_http(self.http_app, host, port)
        if self.settings.observe.profile_port and self.worker == 0:
            await self._start_profile_listener(self.settings.observe.profile_port)

    async def _start_profile_listener(self, port: int) -> None:
        """No auth, so loopback only, whatever the other listeners bind to."""
        from mxpress.server.http import serve_http
        from mxpress.server.http_profile import build_profile_app

        self.profile_http = await serve_http(build_profile_app(self.profiler), "127.0.0.1", port)

    async def stop(self, grace: float = 30.0) -> None:
        """Graceful: stop accepting, finish what is in flight, QUIT sessions, close."""
        if self.submission is not None:
            await self.submission.stop(grace)
        if self.http is not None:
            await self.http.stop()
        if self.profile_http is not None:
            await self.profile_http.stop(grace=1.0)
        await self.scheduler.stop(grace)
        if self.delivery_log is not None:
            self.delivery_log.close()  # after the scheduler: its last attempts are written
        await self.mailer.close()
        if self.queue_depth is not None:
            await self.queue_depth.stop()
        if self.metrics_file is not None:
            await self.metrics_file.stop()
        if self.view is not None:
            await self.view.close()
        await self.store.close()
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    async def serve(self, *, supervised: bool = False) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully. `supervised`: a worker
        under supervisor.py, which exits at once if the supervisor's pipe closes."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before start(): a stop while starting
            loop.add_signal_handler(sig, stop.set)  # is a graceful one too
        if supervised:
            loop.add_reader(0, _exit_with_supervisor)
        await self.start()
        logger.info("mxpress relay running: %s", self.describe())
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if supervised:
                loop.remove_reader(0)
            await self.stop()

    def describe(self) -> str:
        parts = []
        if self.submission is not None:
            parts.append(f"smtp on {self.submission_address}")
        if self.http is not None:
            parts.append(f"http on {self.settings.http.listen.rsplit(':', 1)[0]}:{self.http.port}")
        if self.profile_http is not None:
            parts.append(f"profiler on 127.0.0.1:{self.profile_http.port} (local, no auth)")
        parts.append(f"queue {self.store.path}")
        return ", ".join(parts)

    @property
    def submission_address(self) -> str:
        assert self.submission is not None
        host = self.settings.submission.listen.rsplit(":", 1)[0]
        return f"{host}:{self.submission.port}"

    async def accept(self, sub: Submission) -> str:
        """A submission is accepted once it is on disk: the queue fsyncs before returning."""
        data = received_header(sub, self.settings.server.hostname, self._date.now()) + sub.data
        auth = sub.auth_user or "-"
        new = NewMessage(sub.sender, list(sub.recipients), data, origin=f"smtp:{auth}@{sub.peer}")
        scheduler = self.scheduler
        reservation = scheduler.reserve(new.recipients[0])
        if reservation is not None:
            # Fresh mail goes straight to delivery: stored and leased in one commit.
            try:
                lease = await self.store.enqueue_leased(new, scheduler.lease_seconds)
            except BaseException:
                scheduler.unreserve(reservation)
                raise
            message_id = lease.message.id
            await scheduler.take(lease, reservation)
        else:
            message_id = await self.store.enqueue(new)
            scheduler.wake()
        if self.metrics is not None:
            self.metrics.on_accepted("smtp")
        return message_id


def _exit_with_supervisor(fd: int = 0) -> None:
    """In a worker: when `fd` (the supervisor's pipe) reaches EOF, the supervisor is
    gone; exit now, like it did (the next run voids our leases). Call from the loop."""
    try:
        data = os.read(fd, 1024)
    except BlockingIOError:
        return
    if not data:
        # stderr may be gone with the supervisor: nothing may stand between us and exit.
        with contextlib.suppress(OSError):
            os.write(2, b"mxpress worker: the supervisor is gone; exiting\n")
        os._exit(1)


async def _hold_lock(path: Path, wait: float) -> IO[bytes]:
    """One relay (worker) per queue file: the queue's leases assume no other process is
    delivering from the same file. Tries for up to `wait` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                raise ConfigError(
                    f"another mxpress relay is running on {path.parent} (it holds {path.name})"
                ) from None
        await asyncio.sleep(0.1)


async def _refuse_orphaned_shards(data: Path, workers: int) -> None:
    """A queue file of a worker that this configuration does not run (server.workers was
    lowered) would never be delivered from: refuse to start rather than strand it."""
    for worker, path in shards(data):
        if worker < workers:
            continue
        async with SQLiteQueue(path, create=False) as orphan:
            counts = await orphan.counts()
        active = sum(counts.messages.values()) - counts.messages.get("done", 0)
        if active:
            raise ConfigError(
                f"server.workers is {workers}, but {path} (worker {worker}'s queue) still "
                f"holds {active} undelivered messages: run with server.workers = "
                f"{worker + 1} until they are delivered (mxpress queue ls shows them)"
            )


def received_header(sub: Submission, hostname: str, date: str) -> bytes:
    """RFC 5321 §4.4 trace field (with the protocol per RFC 3848); `date` is now."""
    proto = "ESMTP" + ("S" if sub.tls else "") + ("A" if sub.auth_user else "")
    if sub.smtputf8:
        proto = "UTF8" + proto[1:] if proto.startswith("E") else proto
    helo = "".join(c for c in sub.helo if c.isprintable() and c not in "()\\") or "unknown"
    value = (
        f"Received: from {helo} ([{sub.peer}])\r\n\tby {hostname} (mxpress) with {proto};\r\n"
        f"\t{date}\r\n"
    )
    return value.encode("utf-8", "replace")


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    sub = settings.submission
    if sub.tls_cert is None or sub.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sub.tls_cert, sub.tls_key)
    return context


def build_relay(
    settings: Settings,
    worker: int = 0,
    *,
    listener: socket.socket | None = None,
    handoff: HandoffFds | None = None,
) -> Relay:
    """Everything `mxpress serve` runs, built from settings (no I/O until start()).

    With `server.workers` > 1 this is one worker process of several (see
    supervisor.py): it owns one queue file, serves SMTP on `listener` (the supervisor's
    listening socket, shared with the others), passes connections to less busy workers
    over `handoff` (server/balance.py) and delivers what it accepted; worker 0 also runs
    the HTTP API and the profiling listener, over a view of every worker's queue file.
    Without `listener` it binds submission.listen itself."""
    data = settings.data_path
    workers = settings.server.workers
    if not 0 <= worker < workers:
        raise ConfigError(f"worker {worker}: server.workers is {workers}")
    d = settings.delivery
    r = settings.retry
    policy = RetryPolicy(
        first_retry=r.first_retry,
        max_backoff=r.max_backoff,
        max_queue_lifetime=r.max_queue_lifetime,
        bounce_queue_lifetime=r.bounce_queue_lifetime,
        delay_warning=r.delay_warning_time,
    )
    store = SQLiteQueue(shard_path(data, worker), retry=policy)
    view = ShardedQueue(data, own=store) if workers > 1 and worker == 0 else None
    o = settings.observe
    registry = CollectorRegistry()  # the relay's own: never prometheus-client's global one
    metrics = RelayMetrics(registry, top_domains=o.top_domains)
    delivery_log = None
    if o.delivery_log:
        delivery_log = DeliveryLog(
            data / ("delivery.jsonl" if worker == 0 else f"delivery.{worker}.jsonl"),
            max_bytes=o.delivery_log_max_bytes,
            backups=o.delivery_log_backups,
        )
    observers: list[Observer] = [metrics.on_attempt]
    if delivery_log is not None:
        observers.append(delivery_log.on_attempt)
    resolver = None
    if d.relay is None:
        resolver = Resolver(settings.dns.nameservers or None, timeout=settings.dns.timeout)
    mailer = Mailer(
        d.relay,
        resolver=resolver,
        port=d.port,
        tls=d.tls,
        verify=d.verify,
        cafile=d.cafile,
        timeout=d.timeout,
        max_connections=d.max_connections,
        max_per_destination=d.max_per_destination,
        local_hostname=settings.server.hostname,
    )
    scheduler = Scheduler(
        store,
        mailer,
        policy,
        hostname=settings.server.hostname,
        concurrency=d.concurrency,
        per_domain=d.per_domain_concurrency,
        lease_seconds=d.lease_seconds,
        poll_interval=d.poll_interval,
        observer=_fan_out(observers),
    )
    # Each worker counts its own file: /metrics labels samples by worker (worker 0 serves
    # them all), so a total is a sum over workers.
    queue_depth = QueueDepth(store.counts, interval=o.queue_counts_interval)
    relay = Relay(
        settings,
        store,
        mailer,
        scheduler,
        None,
        registry=registry,
        metrics=metrics,
        delivery_log=delivery_log,
        queue_depth=queue_depth,
        worker=worker,
        view=view,
    )
    if workers > 1 and worker > 0:
        relay.metrics_file = MetricsFileWriter(
            registry, metrics_file(data, worker), o.worker_metrics_interval
        )
    sub = settings.submission
    if sub.enabled:
        host, port = parse_listen(sub.listen, "submission.listen")
        relay.submission = SubmissionServer(
            relay.accept,
            host=host,
            port=port,
            tls_context=_tls_context(settings),
            implicit_tls=sub.implicit_tls,
            users=sub.users,
            trusted_networks=sub.trusted_networks,
            max_message_size=sub.max_message_size,
            max_recipients=sub.max_recipients,
            hostname=settings.server.hostname,
            sock=listener,
            balance=None if handoff is None else Balancer(worker, handoff),
        )
    if settings.http.enabled and worker == 0:
        with contextlib.suppress(ImportError):  # the HTTP API needs starlette + uvicorn
            from mxpress.server.http import build_http_app

            def enqueued(_id: str) -> None:
                metrics.on_accepted("http")
                scheduler.wake()

            relay.http_app = build_http_app(
                view or store,
                api_keys=settings.http.api_keys,
                max_message_size=sub.max_message_size,
                metrics_registry=registry,
                on_enqueued=enqueued,
                profiler=relay.profiler,
                metrics_exposition=(
                    (lambda: merged_exposition(registry, data, workers)) if workers > 1 else None
                ),
            )
    submission = relay.submission
    metrics.watch(
        pool=lambda: mailer.pool.stats,
        dns=(lambda: resolver.stats) if resolver is not None else None,
        scheduler=lambda: scheduler.stats,
        in_flight=lambda: scheduler.in_flight,
        submission=(lambda: submission.stats) if submission is not None else None,
        queue=queue_depth,
        delivery_log=delivery_log,
    )
    return relay


def _fan_out(observers: Sequence[Observer]) -> Observer:
    """One scheduler observer calling each of `observers`; one failing does not keep
    the others from seeing the attempt."""

    def observe(
        message: QueuedMessage, result: SendResult, outcomes: Sequence[AttemptOutcome]
    ) -> None:
        for observer in observers:
            try:
                observer(message, result, outcomes)
            except Exception:
                logger.exception("delivery observer %r failed on %s", observer, message.id)

    return observe
