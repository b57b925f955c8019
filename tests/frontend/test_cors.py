"""Browser access (CORS): off by default, and for the allowed origins on every route,
with the API key, errors and streams included."""

from __future__ import annotations

import aiohttp
import pytest

from helix.engine import AsyncEngine
from tests.frontend.conftest import LOOP, MODEL_NAME, Server, running_server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

UI = "http://localhost:3000"
KEY = "secret-key"
COMPLETION = {"model": MODEL_NAME, "prompt": "The quick", "max_tokens": 3}


def preflight_headers(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}


async def test_no_cors_headers_by_default(server: Server, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url("/v1/completions"), json=COMPLETION, headers={"Origin": UI}) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
    async with http.options(server.url("/v1/completions"), headers=preflight_headers(UI)) as response:
        assert response.status == 405


async def test_allowed_origin_passes_the_preflight_and_reads_answers(engine: AsyncEngine,
                                                                     http: aiohttp.ClientSession) -> None:
    async with running_server(engine, api_key=KEY, allowed_origins=(UI,)) as server:
        url = server.url("/v1/completions")
        async with http.options(url, headers=preflight_headers(UI)) as response:  # no key: preflights carry none
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == UI
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert "AUTHORIZATION" in response.headers["Access-Control-Allow-Headers"].upper()
        authorized = {"Origin": UI, "Authorization": f"Bearer {KEY}"}
        async with http.post(url, json=COMPLETION, headers=authorized) as response:
            assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == UI
            assert (await response.json())["usage"]["completion_tokens"] == 3
        async with http.post(url, json={**COMPLETION, "stream": True}, headers=authorized) as response:
            assert response.headers["Access-Control-Allow-Origin"] == UI
            assert (await response.text()).rstrip().endswith("data: [DONE]")
        # Errors stay readable by the page, so it can show them; the key is still required.
        async with http.post(url, json=COMPLETION, headers={"Origin": UI}) as response:
            assert response.status == 401 and response.headers["Access-Control-Allow-Origin"] == UI
        async with http.post(url, json={**COMPLETION, "max_tokens": -1}, headers=authorized) as response:
            assert response.status == 400 and response.headers["Access-Control-Allow-Origin"] == UI


async def test_other_origins_get_no_access(engine: AsyncEngine, http: aiohttp.ClientSession) -> None:
    async with running_server(engine, allowed_origins=(UI,)) as server:
        url = server.url("/v1/completions")
        async with http.options(url, headers=preflight_headers("http://evil.example")) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
        async with http.post(url, json=COMPLETION, headers={"Origin": "http://evil.example"}) as response:
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_any_origin(engine: AsyncEngine, http: aiohttp.ClientSession) -> None:
    async with running_server(engine, allowed_origins=("*",)) as server:
        async with http.options(server.url("/v1/models"), headers={
                "Origin": "http://anywhere.example", "Access-Control-Request-Method": "GET"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://anywhere.example")
        async with http.get(server.url("/v1/models"), headers={"Origin": "http://anywhere.example"}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] in ("*", "http://anywhere.example")
