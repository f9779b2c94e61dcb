"""Profiling over HTTP: `GET /v1/admin/profile` in the API (behind the API key), and the
local-only listener of `mxpress serve --profile-port` (no auth: it binds 127.0.0.1).

    GET /profile?seconds=10&format=html|speedscope|collapsed

Both answer with the rendered profile (see mxpress.observe.profiler), 400 for a bad
parameter, 409 while another capture runs, 503 if pyinstrument is missing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mxpress.errors import ConfigError, ProfilerBusy, ProfilerError
from mxpress.observe.profiler import FORMATS, Profiler

DEFAULT_SECONDS = 10.0
Endpoint = Callable[[Request], Awaitable[Response]]


def default_seconds(profiler: Profiler) -> float:
    return min(DEFAULT_SECONDS, profiler.max_seconds)


def profile_endpoint(
    profiler: Profiler, authenticate: Callable[[Request], object] | None = None
) -> Endpoint:
    """The handler for both listeners; `authenticate` raises HTTPException(401)."""

    async def profile(request: Request) -> Response:
        if authenticate is not None:
            authenticate(request)
        text = request.query_params.get("seconds")  # "seconds=" is not "no seconds"
        seconds = default_seconds(profiler)
        if text is not None:
            try:
                seconds = float(text)
            except ValueError:
                raise HTTPException(400, f"seconds must be a number, got {text[:40]!r}") from None
        fmt = request.query_params.get("format", "html")
        try:
            profiler.check(seconds, fmt)
        except ConfigError as exc:
            raise HTTPException(400, exc.message) from None
        try:
            body = await profiler.capture(seconds, fmt)
        except ProfilerBusy as exc:
            raise HTTPException(409, exc.message) from None
        except ProfilerError as exc:
            raise HTTPException(503, exc.message) from None
        media_type, extension = FORMATS[fmt]
        headers = {}
        if fmt != "html":  # HTML opens in the browser; the others are files for tools
            headers["Content-Disposition"] = f'attachment; filename="mxpress-profile.{extension}"'
        return Response(body, media_type=media_type, headers=headers)

    return profile


def profile_operation(max_seconds: float) -> dict[str, Any]:
    """The OpenAPI operation of GET /v1/admin/profile. Its bounds are the profiler's, so
    requests generated from the document (schemathesis) stay short when the app is built
    with a short cap."""
    error = {"$ref": "#/components/schemas/Error"}

    def answer(why: str) -> dict[str, Any]:
        return {"description": why, "content": {"application/json": {"schema": error}}}

    seconds = {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": max_seconds,
        "default": min(DEFAULT_SECONDS, max_seconds),
    }
    formats = {"type": "string", "enum": list(FORMATS), "default": "html"}
    return {
        "summary": "Profile the running relay for a while (statistical, pyinstrument)",
        "operationId": "captureProfile",
        "description": "Samples the event loop's thread (every task) for `seconds`, then "
        "renders the profile. One capture at a time. Nothing is sampled between captures.",
        "parameters": [
            {
                "name": "seconds",
                "in": "query",
                "required": False,
                "schema": seconds,
                "description": "How long to sample the relay's event loop.",
            },
            {
                "name": "format",
                "in": "query",
                "required": False,
                "schema": formats,
                "description": "html (for a browser), speedscope, or collapsed stacks.",
            },
        ],
        "responses": {
            "200": {
                "description": "The profile: pyinstrument HTML, speedscope JSON, or "
                "collapsed stacks.",
                "content": {
                    "text/html": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            "400": answer("A bad parameter; the message says which."),
            "401": {
                **answer("Missing or unknown API key."),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
            "409": answer("Another profile is being captured; try again when it is done."),
            "503": answer("Profiling is unavailable (pyinstrument is not installed)."),
        },
    }


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {400: "invalid_request", 404: "not_found", 409: "conflict"}.get(exc.status_code, "error")
    body = {"error": {"code": code, "message": exc.detail}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def build_profile_app(profiler: Profiler) -> Starlette:
    """The `--profile-port` listener's app: GET /profile, and usage at GET /."""
    usage = (
        "mxpress profiler (local only, no auth)\n\n"
        f"GET /profile?seconds=N&format={'|'.join(FORMATS)}\n"
        f"  seconds: 0 < N <= {profiler.max_seconds:g} (default {default_seconds(profiler):g})\n"
        "  html opens in a browser; speedscope loads in https://www.speedscope.app;\n"
        "  collapsed feeds flamegraph.pl or inferno.\n"
    )

    async def index(request: Request) -> Response:
        return PlainTextResponse(usage)

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/profile", profile_endpoint(profiler), methods=["GET"]),
        ],
        exception_handlers={HTTPException: _on_http_error},
    )
