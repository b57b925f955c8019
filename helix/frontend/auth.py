"""Bearer-token check for every route but the public ones (/health)."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from helix.frontend.errors import APIError


def auth_middleware(api_key: str, public_paths: frozenset[str]) -> Middleware:
    expected = api_key.encode("utf-8", "surrogateescape")

    @web.middleware
    async def check_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A CORS preflight (OPTIONS) never carries credentials; the request it clears is checked.
        if request.path not in public_paths and request.method != "OPTIONS":
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            given = token.strip().encode("utf-8", "surrogateescape")
            # compare_digest: the time taken does not reveal how much of the key matched.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
                raise APIError(401, "missing or incorrect API key: send `Authorization: Bearer <key>`",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_api_key
