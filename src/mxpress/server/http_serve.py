"""Running an ASGI app (the HTTP API) with uvicorn inside the relay's own event loop."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class HTTPServerHandle:
    """A running HTTP server (see `serve_http`)."""

    host: str
    port: int
    _server: uvicorn.Server
    _sockets: list[socket.socket]
    _loop_task: asyncio.Task[None]
    _stopping: bool = False

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to `grace` seconds, default
        the one given to serve_http), then cancel what is left and close."""
        if self._stopping:
            return
        self._stopping = True
        if grace is not None:
            self._server.config.timeout_graceful_shutdown = math.ceil(grace)
        self._server.should_exit = True  # main_loop notices within 0.1 s
        await self._loop_task
        await self._server.shutdown(sockets=self._sockets)


async def serve_http(
    app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, grace: float = 10.0
) -> HTTPServerHandle:
    """Serve `app` with uvicorn in the running event loop; port 0 picks a free port.

    No signal handlers are installed and no logging is configured: the relay owns both.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,  # nothing here trusts the client address; no proxy is assumed
        timeout_graceful_shutdown=math.ceil(grace),
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    # Our own socket, so that a port-0 bind tells us the port and a bind error is an
    # OSError here (uvicorn would sys.exit()).
    loop = asyncio.get_running_loop()
    family, kind, proto, _, address = (
        await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    )[0]
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on such sockets, and
    # without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    bound_port: int = sock.getsockname()[1]
    logger.info("http: listening on %s:%d", host, bound_port)
    task = asyncio.create_task(server.main_loop(), name=f"mxpress-http-{bound_port}")
    return HTTPServerHandle(host, bound_port, server, [sock], task)
