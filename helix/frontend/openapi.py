"""GET /openapi.json: an OpenAPI 3.1 document generated from the route table
and the msgspec types of each route's bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web

import helix
from helix.frontend.protocol import ErrorResponse
from helix.frontend.routing import Endpoint

OPENAPI = web.AppKey("helix_openapi", bytes)
_REF = "#/components/schemas/{name}"


def openapi_document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    types: list[type] = [ErrorResponse]
    for endpoint in endpoints:
        types += [t for t in (endpoint.request, endpoint.response) if t is not None and t not in types]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref = dict(zip(types, schemas))
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Helix", "version": helix.__version__,
                 "description": "OpenAI-compatible API of the Helix serving engine."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _operation(endpoint: Endpoint, ref: dict[type, Any]) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK"}
    if endpoint.response is not None:
        ok["content"] = {"application/json": {"schema": ref[endpoint.response]}}
        if endpoint.streams:
            ok["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.handler.__name__,
        "responses": {"200": ok, "default": {"description": "Error",
                                             "content": {"application/json": {"schema": ref[ErrorResponse]}}}},
    }
    if endpoint.request is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": ref[endpoint.request]}}}
    if not endpoint.public:
        operation["security"] = [{"bearer": []}]
    return operation


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


ENDPOINTS = [Endpoint("GET", "/openapi.json", openapi_json, "This document.")]
