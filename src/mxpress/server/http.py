"""The relay's HTTP API (docs/http-api.md): submit messages, follow them, run the queue.

    app = build_http_app(store, api_keys={"billing": api_key_digest(key)})
    handle = await serve_http(app, "127.0.0.1", 8025)
    ...
    await handle.stop()

Rules:
- Every route but /healthz, /metrics and /openapi.json needs `Authorization: Bearer <key>`.
  Only SHA-256 digests of the keys are configured: keys are long random tokens, so a fast
  hash is enough, and a leaked config does not leak the keys.
- A submission is validated completely (http_schema.py) before the store sees it; the 202
  is sent only after `store.enqueue` returned, i.e. after the fsync.
- Errors are JSON `{"error": {"code", "message"}}`; the code follows the status.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mxpress.errors import ConfigError, LocalProtocolError, QueueError
from mxpress.observe.profiler import Profiler
from mxpress.queue.store import MessageState, NewMessage, QueueAdmin
from mxpress.server import http_schema as schema
from mxpress.server.http_openapi import openapi_document
from mxpress.server.http_profile import profile_endpoint, profile_operation
from mxpress.server.http_serve import HTTPServerHandle, serve_http

__all__ = [
    "HTTPServerHandle",
    "api_key_digest",
    "build_http_app",
    "new_api_key",
    "serve_http",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 1000
# Parsing and building a big message takes milliseconds of CPU: off the event loop.
_THREAD_THRESHOLD = 64 * 1024
_MAX_ID = 128
# Metric labels take only these: a client must not be able to invent label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}

Health = Callable[[], Awaitable[dict[str, object]]]


def api_key_digest(key: str) -> str:
    """What goes in the configuration for an API key: its SHA-256, in hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A fresh API key (256 random bits, URL-safe)."""
    return "mxp_" + secrets.token_urlsafe(32)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    code = _ERROR_CODES.get(status, "error")
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    # The router's own 404/405 carry only the reason phrase; say what was asked.
    where = f"{request.method} {request.url.path[:200]}"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {where} (see /openapi.json)"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method not allowed: {where}; this path allows {allowed}"
    return _error(exc.status_code, message, exc.headers)


async def _on_refused(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


async def _on_queue_error(request: Request, exc: Exception) -> Response:
    logger.warning("http: queue error on %s %s: %s", request.method, request.url.path, exc)
    # Nothing was accepted; the queue's trouble (busy, disk full) may well pass.
    return _error(503, f"the queue is unavailable, try again later: {exc}", {"Retry-After": "5"})


async def _on_crash(request: Request, exc: Exception) -> Response:
    return _error(500, "internal error; the server log has the details")


@dataclass(slots=True)
class _Api:
    """The endpoints, with everything they need; built once per app (no globals)."""

    store: QueueAdmin
    keys: list[tuple[str, bytes]]  # (name, SHA-256 digest of the key)
    max_message_size: int
    max_request_size: int
    max_recipients: int
    registry: CollectorRegistry
    accepted: Counter
    on_enqueued: Callable[[str], None] | None
    health_check: Health | None
    exposition: Callable[[], bytes] | None = None  # what /metrics serves, if not the registry

    # --- auth ------------------------------------------------------------------------

    def authenticate(self, request: Request) -> str:
        """The name of the caller's key; 401 if missing or unknown."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": 'Bearer realm="mxpress"'},
            )
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, expected in self.keys:  # no early exit: the time does not tell which
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise HTTPException(
                401,
                "unknown API key",
                {"WWW-Authenticate": 'Bearer realm="mxpress", error="invalid_token"'},
            )
        return found

    # --- submission ------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        key_name = self.authenticate(request)
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise HTTPException(
                415, "the request body must be JSON (Content-Type: application/json)"
            )
        body = await self._read_body(request)
        if len(body) > _THREAD_THRESHOLD:
            parsed = await asyncio.to_thread(self._parse, body)
        else:
            parsed = self._parse(body)
        if len(parsed.data) > self.max_message_size:
            raise HTTPException(
                413,
                f"the message is {len(parsed.data)} octets; the limit is "
                f"{self.max_message_size} octets",
            )
        message_id = await self.store.enqueue(
            NewMessage(parsed.sender, parsed.recipients, parsed.data, origin=f"http:{key_name}")
        )
        # Stored and fsynced: from here on the message is ours to deliver.
        self.accepted.inc()
        if self.on_enqueued is not None:
            try:
                self.on_enqueued(message_id)
            except Exception:  # the message is stored; a wake-up failure must not hide that
                logger.exception("http: on_enqueued(%s) failed", message_id)
        return JSONResponse(
            {
                "id": message_id,
                "recipients": list(parsed.recipients),
                "size": len(parsed.data),
                "message_id": parsed.message_id,
            },
            status_code=202,
            headers={"Location": f"/v1/messages/{message_id}"},
        )

    def _parse(self, body: bytes) -> schema.ParsedMessage:
        return schema.parse_message(schema.parse_json(body), max_recipients=self.max_recipients)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_request_size
        too_big = HTTPException(413, f"the request body exceeds the limit of {limit} octets")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and (len(length) > 15 or int(length) > limit):
            raise too_big  # refused before reading it
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def message(self, request: Request) -> Response:
        if request.method == "DELETE":  # the resource's own URI; same as DELETE /v1/queue/{id}
            return await self.delete(request)
        self.authenticate(request)
        message = await self.store.get(self._id(request))
        if message is None:
            raise HTTPException(404, f"no message {request.path_params['id']!r} in the queue")
        return JSONResponse(schema.message_json(message))

    # --- queue admin -----------------------------------------------------------------

    async def queue_list(self, request: Request) -> Response:
        self.authenticate(request)
        where = schema.parse_queue_filter(request.query_params.multi_items())
        messages = await self.store.list(where)
        full_page = len(messages) == where.limit
        return JSONResponse(
            {
                "messages": [schema.message_json(m) for m in messages],
                "next_after": messages[-1].id if full_page and messages else None,
            }
        )

    async def counts(self, request: Request) -> Response:
        self.authenticate(request)
        return JSONResponse(schema.counts_json(await self.store.counts()))

    async def hold(self, request: Request) -> Response:
        self.authenticate(request)
        message_id = self._id(request)
        if not await self.store.hold(message_id):
            await self._conflict(message_id, "it is done: there is nothing left to hold")
        return JSONResponse({"id": message_id, "state": str(MessageState.HELD)})

    async def release(self, request: Request) -> Response:
        self.authenticate(request)
        message_id = self._id(request)
        if not await self.store.release_hold(message_id):
            await self._conflict(message_id, "it is not on hold")
        return JSONResponse({"id": message_id, "state": str(MessageState.ACTIVE)})

    async def retry(self, request: Request) -> Response:
        self.authenticate(request)
        message_id = self._id(request)
        if await self.store.get(message_id) is None:
            raise HTTPException(404, f"no message {message_id!r} in the queue")
        count = await self.store.retry_now(message_id)
        return JSONResponse({"id": message_id, "retried": count})

    async def retry_all(self, request: Request) -> Response:
        self.authenticate(request)
        return JSONResponse({"retried": await self.store.retry_now(None)})

    async def delete(self, request: Request) -> Response:
        self.authenticate(request)
        message_id = self._id(request)
        if not await self.store.delete(message_id):
            raise HTTPException(404, f"no message {message_id!r} in the queue")
        return Response(status_code=204)

    def _id(self, request: Request) -> str:
        message_id: str = request.path_params["id"]
        if len(message_id) > _MAX_ID:  # no store has such ids; keep junk out of the logs
            raise HTTPException(404, "no such message (the id is too long)")
        return message_id

    async def _conflict(self, message_id: str, why: str) -> None:
        """404 if the message is unknown, else 409 with `why`."""
        if await self.store.get(message_id) is None:
            raise HTTPException(404, f"no message {message_id!r} in the queue")
        raise HTTPException(409, f"message {message_id!r}: {why}")

    # --- open endpoints --------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.health_check is None:
            return JSONResponse({"status": "ok"})
        try:
            report = await self.health_check()
        except Exception as exc:  # a failing check is the news, not a crash
            logger.warning("http: health check failed: %s", exc)
            return JSONResponse({"status": "error", "error": str(exc)}, status_code=503)
        status = 200 if report.get("status") == "ok" else 503
        return JSONResponse(report, status_code=status)

    async def metrics(self, request: Request) -> Response:
        body = self.exposition() if self.exposition else generate_latest(self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


class _Metrics:
    """Counts requests by route template (not raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp, requests: Counter, seconds: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500  # if the app raises before answering, the server error handler does

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.requests.labels(method, route, str(status)).inc()
            self.seconds.labels(route).observe(time.monotonic() - start)


def _key_digests(api_keys: Mapping[str, str]) -> list[tuple[str, bytes]]:
    keys: list[tuple[str, bytes]] = []
    for name, digest in api_keys.items():
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"API key {name!r}: expected the SHA-256 of the key as 64 hex digits "
                "(see mxpress.server.http.api_key_digest), not the key itself"
            )
        keys.append((name, raw))
    return keys


def build_http_app(
    store: QueueAdmin,
    *,
    api_keys: Mapping[str, str],
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_request_size: int | None = None,
    max_recipients: int = DEFAULT_MAX_RECIPIENTS,
    metrics_registry: CollectorRegistry | None = None,
    on_enqueued: Callable[[str], None] | None = None,
    health: Health | None = None,
    profiler: Profiler | None = None,
    metrics_exposition: Callable[[], bytes] | None = None,
) -> Starlette:
    """The HTTP API as an ASGI app.

    api_keys: key name -> SHA-256 hex digest of the key (`api_key_digest`). The name is
        recorded as the message's origin ("http:<name>"). No keys: every protected route
        answers 401.
    max_request_size: the largest request body; by default twice the message size plus
        64 KiB (base64 attachments grow by 4/3, JSON escapes add more).
    metrics_registry: the app registers its HTTP metrics there and /metrics serves the
        whole registry (the relay passes the one holding its other metrics). Default: a
        registry of its own. One app per registry: metric names cannot be registered twice.
    metrics_exposition: what /metrics serves instead of the registry (the relay's worker 0
        passes every worker's metrics, see observe/worker_metrics.py).
    on_enqueued: called with each new message id after the store accepted it (to wake
        the scheduler); must not block.
    health: returns the /healthz report; "status": "ok" gives 200, anything else 503.
    profiler: serves GET /v1/admin/profile (a pyinstrument capture, behind the API key);
        without it the route does not exist.
    """
    if max_message_size < 1:
        raise ConfigError(f"max_message_size must be >= 1 octet, got {max_message_size}")
    if max_recipients < 1:
        raise ConfigError(f"max_recipients must be >= 1, got {max_recipients}")
    if max_request_size is None:
        max_request_size = 2 * max_message_size + 64 * 1024
    registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
    accepted = Counter(
        "mxpress_http_messages_accepted",
        "Messages accepted (stored) through the HTTP API",
        registry=registry,
    )
    api = _Api(
        store,
        _key_digests(api_keys),
        max_message_size,
        max_request_size,
        max_recipients,
        registry,
        accepted,
        on_enqueued,
        health,
        metrics_exposition,
    )
    document = openapi_document(max_message_size=max_message_size, max_recipients=max_recipients)
    if profiler is not None:
        document["paths"]["/v1/admin/profile"] = {"get": profile_operation(profiler.max_seconds)}

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    routes = [
        Route("/v1/messages", api.submit, methods=["POST"]),
        Route("/v1/messages/{id}", api.message, methods=["GET", "DELETE"]),
        Route("/v1/queue", api.queue_list, methods=["GET"]),
        # Fixed paths before /v1/queue/{id}, which would otherwise take "counts" as an id.
        Route("/v1/queue/counts", api.counts, methods=["GET"]),
        Route("/v1/queue/retry", api.retry_all, methods=["POST"]),
        Route("/v1/queue/{id}", api.delete, methods=["DELETE"]),
        Route("/v1/queue/{id}/hold", api.hold, methods=["POST"]),
        Route("/v1/queue/{id}/release", api.release, methods=["POST"]),
        Route("/v1/queue/{id}/retry", api.retry, methods=["POST"]),
        Route("/healthz", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if profiler is not None:
        endpoint = profile_endpoint(profiler, api.authenticate)
        routes.append(Route("/v1/admin/profile", endpoint, methods=["GET"]))
    requests = Counter(
        "mxpress_http_requests",
        "HTTP API requests by method, route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    seconds = Histogram(
        "mxpress_http_request_seconds",
        "HTTP API request duration by route",
        ["route"],
        registry=registry,
    )
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Metrics, requests=requests, seconds=seconds)],
        exception_handlers={
            HTTPException: _on_http_error,
            LocalProtocolError: _on_refused,
            QueueError: _on_queue_error,
            Exception: _on_crash,
        },
    )
    app.state.api = api
    return app
