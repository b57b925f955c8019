"""The server over an engine in a child process: completions (whole and
streamed) equal the in-process engine's, bad input is a 400, and /metrics
reads the child's counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from helix.engine_process import EngineProcess
from tests.frontend.conftest import LOOP, MODEL_NAME, Server, running_server, wait_for

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)


@pytest_asyncio.fixture(scope="module", loop_scope=LOOP)
async def process_server(tiny_model_dirs: dict[str, Path]) -> AsyncIterator[Server]:
    engine = EngineProcess(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)
    async with running_server(engine) as server:
        yield server
    await engine.shutdown()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def process_client(process_server: Server) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=process_server.url("/v1"), api_key="unused", max_retries=0, timeout=30)
    yield client
    await client.close()


async def test_completions_equal_the_in_process_engines(process_client: AsyncOpenAI, client: AsyncOpenAI) -> None:
    request = dict(model=MODEL_NAME, prompt="To be, or not", max_tokens=16, temperature=0.0)
    here = await process_client.completions.create(**request)
    there = await client.completions.create(**request)
    assert here.choices[0].text == there.choices[0].text and here.usage == there.usage
    chunks = [chunk async for chunk in await process_client.completions.create(**request, stream=True)]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == there.choices[0].text


async def test_bad_input_is_a_400_and_metrics_count_the_childs_tokens(process_server: Server,
                                                                      http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL_NAME, "prompt": [5, 10**6], "max_tokens": 4}
    async with http.post(process_server.url("/v1/completions"), json=body) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "prompt"
    body = {"model": MODEL_NAME, "prompt": [5, 6, 7], "max_tokens": 4, "ignore_eos": True}
    before = (await process_server.metrics(http)).get("helix:generation_tokens_total", 0.0)
    async with http.post(process_server.url("/v1/completions"), json=body) as response:
        assert response.status == 200

    async def counted() -> bool:
        return (await process_server.metrics(http)).get("helix:generation_tokens_total", 0.0) == before + 4

    assert await wait_for(counted)

