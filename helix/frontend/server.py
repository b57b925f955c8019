"""The aiohttp application: routes, middlewares, and how to run it.

Runners must be made with `make_runner`: it turns on handler cancellation, so
a client that disconnects cancels its handler, which aborts its engine
requests (aiohttp leaves handlers running by default). On SIGTERM `serve`
stops admission, drains for --shutdown-timeout, then cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import aiohttp_cors
import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from helix.engine import EngineStreams
from helix.frontend import openapi, routes_chat, routes_completions, routes_misc, routes_tokens
from helix.frontend.auth import auth_middleware
from helix.frontend.errors import error_middleware
from helix.frontend.routing import Endpoint
from helix.frontend.state import DEFAULT_BACKLOG, STATE, ServerConfig, ServerState
from helix.frontend.status_log import log_status

logger = logging.getLogger(__name__)
_CLEANUP_GRACE_S = 0.5

ENDPOINTS: list[Endpoint] = [*routes_completions.ENDPOINTS, *routes_chat.ENDPOINTS, *routes_tokens.ENDPOINTS,
                             *routes_misc.ENDPOINTS, *openapi.ENDPOINTS]


def build_app(engine: EngineStreams, config: ServerConfig) -> web.Application:
    """The engine is not owned by the app: closing the app leaves it running."""
    middlewares: list[Middleware] = [error_middleware]
    if config.api_key:
        middlewares.append(auth_middleware(config.api_key, frozenset(e.path for e in ENDPOINTS if e.public)))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[STATE] = ServerState(engine, config)
    app[openapi.OPENAPI] = msgspec.json.encode(openapi.openapi_document(ENDPOINTS))
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
    if config.allowed_origins:
        _allow_origins(app, config.allowed_origins)
    return app


def _allow_origins(app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS on every route for pages from `origins`: preflights answered, any request header
    allowed (the API key travels in Authorization), every response header readable. No
    credentials mode: browsers send no cookies, and the API uses none."""
    options = aiohttp_cors.ResourceOptions(allow_headers="*", expose_headers="*", allow_methods="*")
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)


def make_runner(app: web.Application) -> web.AppRunner:
    # `serve` drains in-flight requests itself before cleanup, so cleanup
    # cancels whatever is left at once instead of waiting aiohttp's 60 s.
    return web.AppRunner(app, handler_cancellation=True, shutdown_timeout=_CLEANUP_GRACE_S)


async def serve(engine: EngineStreams, config: ServerConfig, host: str, port: int, log_interval_s: float,
                shutdown_timeout_s: float = 30.0, backlog: int = DEFAULT_BACKLOG) -> int:
    """Serve until SIGTERM/SIGINT (or cancellation), then shut down gracefully:
    refuse new requests with 503, give in-flight ones `shutdown_timeout_s` to
    finish, abort the rest (handler cancellation aborts their engine requests),
    and shut the engine down. Returns the process exit status: 0 after a
    signal, 1 when the engine died (its requests have already failed; a
    supervisor should restart the process)."""
    app = build_app(engine, config)
    runner = make_runner(app)
    await runner.setup()
    status = asyncio.create_task(log_status(engine.stats, log_interval_s)) if log_interval_s > 0 else None
    stop = asyncio.Event()
    _on_signals(stop)
    try:
        await web.TCPSite(runner, host, port, backlog=backlog).start()
        logger.info("serving %r on http://%s:%d", config.served_model_name, host, port)
        signalled, died = asyncio.create_task(stop.wait()), asyncio.create_task(engine.died.wait())
        await asyncio.wait((signalled, died), return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        died.cancel()
        if engine.died.is_set():
            logger.error("engine died (%s); exiting with status 1", engine.dead_error)
            return 1
        await _drain(app[STATE], shutdown_timeout_s)
        return 0
    finally:
        if status is not None:
            status.cancel()
        await runner.cleanup()
        await engine.shutdown()


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signal_number, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            return


async def _drain(state: ServerState, timeout_s: float) -> None:
    state.draining = True
    logger.info("shutting down: waiting up to %.0f s for %d requests in flight", timeout_s, state.in_flight)
    deadline = time.monotonic() + timeout_s
    while state.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.in_flight:
        logger.info("aborting %d requests still in flight", state.in_flight)
