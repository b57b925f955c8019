"""Chaos under load: 500 requests (streaming and not) against a speculating
server whose KV budget forces swapping and recompute, with about 30% of the
clients disconnecting at random moments. Afterwards every request that was
not cancelled has the right token count, every block is free, swap space is
empty, and nothing is left running."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path

import aiohttp

from helix.engine_args import embedded_model_path
from tests.frontend.conftest import make_engine, running_server

NUM_REQUESTS = 500
CONCURRENCY = 48
MAX_TOKENS = 24


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def one_request(http: aiohttp.ClientSession, url: str, rng: random.Random) -> tuple[str, int | None]:
    """('done', tokens) or ('cancelled', None); the client may walk away mid-request."""
    stream = rng.random() < 0.5
    body = {"model": "tiny-llama", "prompt": "ROMEO:\n" * rng.randrange(1, 10), "max_tokens": MAX_TOKENS,
            "ignore_eos": True, "temperature": rng.choice([0.0, 1.0]), "stream": stream,
            "stream_options": {"include_usage": True} if stream else None}
    if body["stream_options"] is None:
        del body["stream_options"]

    async def call() -> int:
        async with http.post(url, json=body) as response:
            assert response.status == 200, await response.text()
            if not stream:
                return (await response.json())["usage"]["completion_tokens"]
            tokens = None
            async for line in response.content:
                text = line.decode().strip()
                if text.startswith("data: {"):
                    usage = json.loads(text[6:]).get("usage")
                    tokens = usage["completion_tokens"] if usage else tokens
            return tokens

    task = asyncio.ensure_future(call())
    if rng.random() < 0.3:
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        if not task.done():
            task.cancel()  # the client disconnects
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled", None
    return "done", await task


async def test_chaos_under_load() -> None:
    # 40 blocks for 32 sequences forces preemption; ~4 blocks of swap make some
    # preemptions swap and the rest recompute.
    engine = make_engine(Path(embedded_model_path("target")), draft_model=embedded_model_path("draft"),
                         num_kv_blocks=40, block_size=16, swap_space=0.0005, max_num_seqs=32)
    rss_before = rss_bytes()
    threads_before = threading.active_count()
    async with running_server(engine) as server:
        rng = random.Random(0)
        limit = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            async def bounded() -> tuple[str, int | None]:
                async with limit:
                    return await one_request(http, server.url("/v1/completions"), rng)

            results = await asyncio.wait_for(asyncio.gather(*(bounded() for _ in range(NUM_REQUESTS))), 150)
        for _ in range(200):  # aborts of the last disconnects land within a step or two
            stats = engine.stats()
            if stats["running"] == stats["waiting"] == stats["swapped"] == 0:
                break
            await asyncio.sleep(0.02)
    done = [tokens for outcome, tokens in results if outcome == "done"]
    cancelled = len(results) - len(done)
    assert 0.15 * NUM_REQUESTS < cancelled < 0.45 * NUM_REQUESTS
    assert all(tokens == MAX_TOKENS for tokens in done)
    stats = engine.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert stats["cpu_swap_blocks_used"] == 0
    assert stats["running"] == stats["waiting"] == stats["swapped"] == 0
    assert stats["swapped_out"] > 0 and stats["recomputed"] > 0 and stats["spec_draft_tokens"] > 0
    await engine.shutdown()
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not pending, pending
    assert threading.active_count() <= threads_before
    assert rss_bytes() - rss_before < 300 * (1 << 20)
