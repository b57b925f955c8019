"""The aiohttp application: routes, middlewares, and how to run it.

Runners must be made with `make_runner`: it turns on handler cancellation, so
a client that disconnects cancels its handler, which aborts its engine
requests (aiohttp leaves handlers running by default).
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from helix.engine import AsyncEngine
from helix.frontend import openapi, routes_chat, routes_completions, routes_misc, routes_tokens
from helix.frontend.auth import auth_middleware
from helix.frontend.errors import error_middleware
from helix.frontend.routing import Endpoint
from helix.frontend.state import STATE, ServerConfig, ServerState
from helix.frontend.status_log import log_status

logger = logging.getLogger(__name__)

ENDPOINTS: list[Endpoint] = [*routes_completions.ENDPOINTS, *routes_chat.ENDPOINTS, *routes_tokens.ENDPOINTS,
                             *routes_misc.ENDPOINTS, *openapi.ENDPOINTS]


def build_app(engine: AsyncEngine, config: ServerConfig) -> web.Application:
    """The engine is not owned by the app: closing the app leaves it running."""
    middlewares: list[Middleware] = [error_middleware]
    if config.api_key:
        middlewares.append(auth_middleware(config.api_key, frozenset(e.path for e in ENDPOINTS if e.public)))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[STATE] = ServerState(engine, config)
    app[openapi.OPENAPI] = msgspec.json.encode(openapi.openapi_document(ENDPOINTS))
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, handler_cancellation=True)


async def serve(engine: AsyncEngine, config: ServerConfig, host: str, port: int, log_interval_s: float) -> None:
    """Serve until cancelled, then close the server and shut the engine down."""
    runner = make_runner(build_app(engine, config))
    await runner.setup()
    status = asyncio.create_task(log_status(engine.stats, log_interval_s)) if log_interval_s > 0 else None
    try:
        await web.TCPSite(runner, host, port).start()
        logger.info("serving %r on http://%s:%d", config.served_model_name, host, port)
        await asyncio.Event().wait()
    finally:
        if status is not None:
            status.cancel()
        await runner.cleanup()
        await engine.shutdown()
