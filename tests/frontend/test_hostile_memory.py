"""Hostile inputs, sent over and over while a well-formed request generates:
each gets a fast 4xx in OpenAI's error shape, the process's memory stays
flat, every KV block comes back, and the well-formed request's output is
what it is when it runs alone."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.frontend.conftest import LOOP, Server, make_engine, rss_bytes, running_server, wait_for
from tests.frontend.test_errors import CHAT_CASES, COMPLETION_CASES, MALFORMED_BODIES, assert_error

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

ROUNDS = 20
HUGE_PROMPT_BYTES = 10 << 20  # over the server's 8 MiB body limit
# RSS growth over all rounds after a warm-up one: measured 0.2-2 MiB on 2 CPU
# cores. Keeping what one round sends would add 10.8 MB a round (the bodies
# other than the 10 MB prompt alone add 0.8 MB, 16 MB over the rounds).
MAX_RSS_GROWTH = 12 << 20
MAX_ANSWER_S = 5.0  # generous: a 4xx needs no engine step
WELL_FORMED = {"prompt": "The quick brown fox", "max_tokens": 64, "ignore_eos": True, "temperature": 0.0}


@dataclass(frozen=True)
class Hostile:
    path: str
    body: bytes
    status: int = 400


def hostile_inputs() -> list[Hostile]:
    """test_errors' invalid bodies, malformed JSON and invalid chats, and a 10 MB prompt."""
    return [*(Hostile("/v1/completions", json.dumps(body).encode()) for body, _ in COMPLETION_CASES),
            *(Hostile("/v1/chat/completions", json.dumps(body).encode()) for body, _ in CHAT_CASES),
            *(Hostile("/v1/completions", raw) for raw in MALFORMED_BODIES),
            Hostile("/v1/completions", json.dumps({"prompt": "x" * HUGE_PROMPT_BYTES}).encode(), 413)]


async def send_hostile(http: aiohttp.ClientSession, server: Server, hostile: Hostile) -> None:
    started = time.perf_counter()
    async with http.post(server.url(hostile.path), data=hostile.body) as response:
        payload = json.loads(await response.read())
        status = response.status
    elapsed = time.perf_counter() - started
    assert_error(status, payload, hostile.status)
    assert elapsed < MAX_ANSWER_S, (hostile.body[:60], elapsed)


async def hostile_round(http: aiohttp.ClientSession, server: Server, inputs: list[Hostile]) -> None:
    for hostile in inputs:
        await send_hostile(http, server, hostile)


async def complete(http: aiohttp.ClientSession, server: Server) -> str:
    async with http.post(server.url("/v1/completions"), json=WELL_FORMED) as response:
        payload: dict[str, Any] = await response.json()
    assert response.status == 200, payload
    assert payload["usage"]["completion_tokens"] == WELL_FORMED["max_tokens"]
    return payload["choices"][0]["text"]


async def completion_during_round(http: aiohttp.ClientSession, server: Server, inputs: list[Hostile]) -> str:
    """WELL_FORMED's text; the round of hostile inputs starts once it is generating."""
    generation = asyncio.create_task(complete(http, server))

    async def generating() -> bool:
        return server.engine.stats()["running"] > 0 or generation.done()

    assert await wait_for(generating)
    await hostile_round(http, server, inputs)
    return await generation


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


async def test_hostile_inputs_leave_memory_flat(tiny_model_dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_model_dirs["llama"])
    inputs = hostile_inputs()
    try:
        async with running_server(engine) as server, aiohttp.ClientSession() as http:
            alone = await complete(http, server)
            assert await completion_during_round(http, server, inputs) == alone  # warm-up
            before = settled_rss()
            for _ in range(ROUNDS):
                assert await completion_during_round(http, server, inputs) == alone
            growth = settled_rss() - before
        stats = engine.stats()
    finally:
        await engine.shutdown()
    assert growth < MAX_RSS_GROWTH, f"RSS grew by {growth / (1 << 20):.1f} MiB over {ROUNDS} rounds"
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert stats["running"] == stats["waiting"] == stats["swapped"] == 0
