"""Service routes: models, health, metrics, version."""

from __future__ import annotations

from aiohttp import web

import helix
from helix.frontend.metrics import CONTENT_TYPE
from helix.frontend.protocol import HealthResponse, ModelCard, ModelList, VersionResponse
from helix.frontend.routing import Endpoint, json_response
from helix.frontend.state import state_of


async def list_models(request: web.Request) -> web.Response:
    state = state_of(request)
    card = ModelCard(id=state.config.served_model_name, created=state.created, max_model_len=state.max_model_len)
    return json_response(ModelList(data=[card]))


async def health(request: web.Request) -> web.Response:
    """200 while the engine's step loop is alive, 503 once it has failed."""
    state = state_of(request)
    state.check_running()
    return json_response(HealthResponse("ok"))


async def metrics(request: web.Request) -> web.Response:
    body = state_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def version(request: web.Request) -> web.Response:
    return json_response(VersionResponse(helix.__version__))


ENDPOINTS = [
    Endpoint("GET", "/v1/models", list_models, "The served model.", response=ModelList),
    Endpoint("GET", "/health", health, "200 while the engine runs, 503 once it has failed.",
             response=HealthResponse, public=True),
    Endpoint("GET", "/metrics", metrics, "Prometheus metrics (text exposition format)."),
    Endpoint("GET", "/version", version, "The Helix version.", response=VersionResponse),
]
