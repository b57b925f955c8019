"""A client that goes away, streaming or not, aborts its request and frees its
KV blocks promptly; the server keeps answering while long generations run."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.frontend.conftest import LOOP, Server, wait_for

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

MAX_TOKENS = 500  # ~2 s of decoding on a CPU: far longer than the test waits for the abort
ABORTS = "helix:request_success_total{finished_reason=abort}"


async def open_request(server: Server, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw HTTP/1.1 request, so that closing the socket is exactly a client disconnect."""
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    await writer.drain()
    return reader, writer


async def assert_freed_after_disconnect(server: Server, http: aiohttp.ClientSession, before: dict[str, float]) -> None:
    async def freed() -> bool:
        metrics = await server.metrics(http)
        return (metrics["helix:kv_cache_usage_perc"] == 0 and metrics["helix:num_requests_running"] == 0
                and metrics.get(ABORTS, 0) == before.get(ABORTS, 0) + 1)

    assert await wait_for(freed, timeout_s=5.0), await server.metrics(http)
    generated = (await server.metrics(http))["helix:generation_tokens_total"] - before["helix:generation_tokens_total"]
    assert generated < MAX_TOKENS  # aborted, not finished


async def test_stream_disconnect_frees_blocks(server: Server, http: aiohttp.ClientSession) -> None:
    before = await server.metrics(http)
    reader, writer = await open_request(server, {"prompt": [1, 2, 3], "max_tokens": MAX_TOKENS,
                                                 "ignore_eos": True, "stream": True})
    chunks = 0
    while chunks < 3:
        line = await asyncio.wait_for(reader.readline(), 10)
        chunks += line.startswith(b"data: {")
    assert (await server.metrics(http))["helix:kv_cache_usage_perc"] > 0
    writer.close()
    await assert_freed_after_disconnect(server, http, before)


async def test_non_stream_disconnect_frees_blocks(server: Server, http: aiohttp.ClientSession) -> None:
    before = await server.metrics(http)
    _, writer = await open_request(server, {"prompt": [4, 5, 6], "max_tokens": MAX_TOKENS, "ignore_eos": True})

    async def generating() -> bool:
        return (await server.metrics(http))["helix:kv_cache_usage_perc"] > 0

    assert await wait_for(generating)
    writer.close()
    await assert_freed_after_disconnect(server, http, before)


async def test_health_answers_during_a_long_generation(server: Server, http: aiohttp.ClientSession) -> None:
    body = {"prompt": [7, 8, 9], "max_tokens": 300, "ignore_eos": True}
    generation = asyncio.create_task(http.post(server.url("/v1/completions"), json=body))
    await wait_for(lambda: _running(server, http))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(server.url("/health")) as response:
        assert response.status == 200 and (await response.json()) == {"status": "ok"}
    assert loop.time() - started < 0.5
    assert not generation.done()
    async with await generation as response:
        assert (await response.json())["usage"]["completion_tokens"] == 300


async def _running(server: Server, http: aiohttp.ClientSession) -> bool:
    return (await server.metrics(http))["helix:num_requests_running"] > 0
