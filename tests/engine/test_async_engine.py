"""The async engine streams outputs, aborts on consumer exit, and keeps the
event loop free while steps run."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from helix import SamplingParams
from helix.engine import AsyncEngine, EngineDeadError

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture
async def engine(tiny_model_dirs: dict[str, Path]):
    engine = AsyncEngine(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)
    yield engine
    await engine.shutdown()


async def collect(engine: AsyncEngine, prompt, params=GREEDY, **kwargs):
    return [out async for out in engine.generate(prompt, params, **kwargs)]


async def test_stream_is_incremental_and_matches_offline(engine: AsyncEngine) -> None:
    outputs = await collect(engine, [5, 6, 7, 8])
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
    final = outputs[-1].outputs[0]
    assert len(final.token_ids) == 12
    assert sum((o.outputs[0].delta_token_ids for o in outputs), []) == final.token_ids
    assert "".join(o.outputs[0].delta_text for o in outputs) == final.text


async def test_concurrent_requests_equal_sequential_ones(engine: AsyncEngine) -> None:
    prompts = [[3 + i, 40 + i, 9] for i in range(6)]
    alone = [(await collect(engine, p))[-1].outputs[0].token_ids for p in prompts]
    together = await asyncio.gather(*(collect(engine, p) for p in prompts))
    assert [t[-1].outputs[0].token_ids for t in together] == alone


async def test_consumer_that_stops_early_aborts_and_frees_blocks(engine: AsyncEngine) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    async for output in engine.generate([1, 2, 3], long, request_id="gone"):
        if len(output.outputs[0].token_ids) >= 3:
            break
    for _ in range(100):
        stats = engine.stats()
        if stats["running"] == stats["waiting"] == 0:
            break
        await asyncio.sleep(0.01)
    stats = engine.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]


async def test_event_loop_answers_while_steps_run(engine: AsyncEngine) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await collect(engine, [4, 5, 6], SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True))
    task.cancel()
    assert ticks > 10


async def test_steps_go_on_while_the_event_loop_is_busy(engine: AsyncEngine) -> None:
    """Steps do not wait for the loop to hand out their outputs: while the loop is
    blocked, the request keeps generating, and the next read gets every token
    made meanwhile in one merged output."""
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    outputs = []
    async for output in engine.generate([7, 8, 9], params):
        outputs.append(output)
        if len(outputs) == 1:
            time.sleep(1.0)  # blocks the event loop, not the step thread
    assert len(outputs) <= 3
    assert len(outputs[1].outputs[0].delta_token_ids) >= 20
    assert len(outputs[-1].outputs[0].token_ids) == 40


async def test_abort_ends_stream_with_abort_reason(engine: AsyncEngine) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True)
    outputs = []
    async for output in engine.generate([7, 8], long, request_id="victim"):
        outputs.append(output)
        if len(outputs) == 2:
            await engine.abort("victim")
    assert outputs[-1].outputs[0].finish_reason == "abort"


async def test_invalid_request_raises_before_admission(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        await collect(engine, [10_000])
    with pytest.raises(ValueError, match="max_model_len"):
        await collect(engine, [1, 2], SamplingParams(max_tokens=10_000))


async def test_failed_step_fails_streams_and_marks_engine_dead(engine: AsyncEngine, monkeypatch) -> None:
    def broken(_step):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(engine.core.runner, "launch", broken)
    with pytest.raises(EngineDeadError, match="injected fault"):
        await collect(engine, [1, 2, 3])
    assert not engine.is_running
    with pytest.raises(EngineDeadError):
        await collect(engine, [1, 2, 3])
