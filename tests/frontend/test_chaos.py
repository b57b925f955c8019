"""Chaos under load: 500 requests from the load client (benchmarks/load),
streaming and not, greedy and sampled, against a speculating server whose KV
budget forces swapping and recompute, with about 30% of the clients
disconnecting at random moments (the client's disconnect mode). Afterwards
every request that was not cancelled has the right token count, every block
is free, swap space is empty, and nothing is left running."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import aiohttp

from benchmarks.load.client import RequestOptions, Target
from benchmarks.load.datasets import SampleRequest
from benchmarks.load.runner import LoadSchedule, RunOutput, run_load
from benchmarks.load.server_api import approx_token_count
from helix.engine import AsyncEngine
from helix.engine_args import embedded_model_path
from tests.frontend.conftest import MODEL_NAME, make_engine, rss_bytes, running_server

NUM_REQUESTS = 500
CONCURRENCY = 48
MAX_TOKENS = 24
# One run per mix, all at once: (streaming, temperature).
MIXES = [(stream, temperature) for stream in (True, False) for temperature in (0.0, 1.0)]
DISCONNECT_FRACTION = 0.3
DISCONNECT_MAX_DELAY_S = 0.5


def prompts(count: int, seed: int) -> list[SampleRequest]:
    rng = random.Random(seed)
    texts = ["ROMEO:\n" * rng.randrange(1, 10) for _ in range(count)]
    return [SampleRequest(text, approx_token_count(text), MAX_TOKENS) for text in texts]


async def run_mixes(base_url: str) -> list[RunOutput]:
    """NUM_REQUESTS requests split over the mixes, each mix its own seeded disconnects."""
    target = Target(base_url, "completions", MODEL_NAME)
    per_mix = NUM_REQUESTS // len(MIXES)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120), connector=connector) as session:
        runs = [run_load(session, target, prompts(per_mix, seed),
                         RequestOptions(temperature, ignore_eos=True, stream=stream),
                         LoadSchedule(max_concurrency=CONCURRENCY // len(MIXES), seed=seed,
                                      disconnect_fraction=DISCONNECT_FRACTION,
                                      disconnect_max_delay_s=DISCONNECT_MAX_DELAY_S),
                         progress=False)
                for seed, (stream, temperature) in enumerate(MIXES)]
        return list(await asyncio.wait_for(asyncio.gather(*runs), 150))


async def settle(engine: AsyncEngine) -> None:
    """Aborts of the last disconnects land within a step or two."""
    for _ in range(200):
        stats = engine.stats()
        if stats["running"] == stats["waiting"] == stats["swapped"] == 0:
            return
        await asyncio.sleep(0.02)


async def test_chaos_under_load() -> None:
    # 40 blocks for 32 sequences forces preemption; ~4 blocks of swap make some
    # preemptions swap and the rest recompute.
    engine = make_engine(Path(embedded_model_path("target")), draft_model=embedded_model_path("draft"),
                         num_kv_blocks=40, block_size=16, swap_space=0.0005, max_num_seqs=32)
    rss_before = rss_bytes()
    threads_before = threading.active_count()
    async with running_server(engine) as server:
        outputs = await run_mixes(server.base_url)
        await settle(engine)
    results = [result for output in outputs for result in output.results]
    assert len(results) == NUM_REQUESTS
    cancelled = [r for r in results if r.cancelled]
    assert 0.15 * NUM_REQUESTS < len(cancelled) < 0.45 * NUM_REQUESTS
    for output in outputs:  # every mix had disconnects and completions
        assert 0 < sum(r.cancelled for r in output.results) < len(output.results)
    finished = [r for r in results if not r.cancelled]
    assert all(r.success for r in finished), [r.error for r in finished if not r.success][:5]
    assert all(r.usage_reported and r.output_tokens == MAX_TOKENS for r in finished)
    stats = engine.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert stats["cpu_swap_blocks_used"] == 0
    assert stats["running"] == stats["waiting"] == stats["swapped"] == 0
    assert stats["swapped_out"] > 0 and stats["recomputed"] > 0 and stats["spec_draft_tokens"] > 0
    await engine.shutdown()
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not pending, pending
    assert threading.active_count() <= threads_before, threading.enumerate()
    assert rss_bytes() - rss_before < 300 * (1 << 20)
