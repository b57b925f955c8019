"""The engine core in a child process: the same streams as in-process, requests
checked before they are sent, aborts that free blocks, and a dead child that
fails every stream."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from helix import LLM, SamplingParams
from helix.engine import EngineDeadError
from helix.engine_process import EngineProcess
from helix.sampling_params import RequestOutputKind

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
OPTIONS = dict(num_kv_blocks=256, block_size=4, check_invariants=True)


@pytest.fixture
async def engine(tiny_model_dirs: dict[str, Path]):
    engine = EngineProcess(str(tiny_model_dirs["llama"]), **OPTIONS)
    yield engine
    await engine.shutdown()


async def collect(engine: EngineProcess, prompt, params=GREEDY):
    return [out async for out in engine.generate(prompt, params)]


async def wait_for_stats(engine: EngineProcess, ready) -> dict:
    for _ in range(200):
        if ready(engine.stats()):
            return engine.stats()
        await asyncio.sleep(0.05)
    raise AssertionError(f"stats never got there: {engine.stats()}")


async def test_concurrent_streams_match_offline_generation(engine: EngineProcess,
                                                           tiny_model_dirs: dict[str, Path]) -> None:
    prompts = [[3 + i, 40 + i, 9] for i in range(6)]
    delta = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    streams = await asyncio.gather(*(collect(engine, p, GREEDY if i % 2 else delta) for i, p in enumerate(prompts)))
    offline = LLM(str(tiny_model_dirs["llama"]), **OPTIONS).generate(prompts, GREEDY, use_tqdm=False)
    for i, (outputs, expected) in enumerate(zip(streams, offline)):
        assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
        assert outputs[-1].prompt_token_ids == prompts[i]
        tokens = (outputs[-1].outputs[0].token_ids if i % 2
                  else sum((o.outputs[0].token_ids for o in outputs), []))
        assert tokens == expected.outputs[0].token_ids
    stats = await wait_for_stats(engine, lambda s: s["generation_tokens"] == 72)
    assert stats["running"] == 0 and stats["gpu_blocks_free"] == stats["gpu_blocks_total"]


async def test_bad_requests_fail_here_with_the_engines_words(engine: EngineProcess) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        await collect(engine, [5, 10**6])
    with pytest.raises(ValueError, match="exceeds max_model_len"):
        await collect(engine, [5, 6], SamplingParams(max_tokens=10**6))
    assert (await collect(engine, [5, 6]))[-1].finished  # the engine carries on


async def test_a_consumer_that_stops_aborts_its_request(engine: EngineProcess) -> None:
    stream = engine.generate([5, 6, 7], SamplingParams(max_tokens=500, ignore_eos=True))
    first = await stream.__anext__()
    assert not first.finished
    await stream.aclose()
    stats = await wait_for_stats(engine, lambda s: s["running"] == 0 and s["waiting"] == 0)
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert (await collect(engine, [8, 9]))[-1].finished


async def test_a_dead_engine_process_fails_every_stream(engine: EngineProcess) -> None:
    stream = engine.generate([5, 6, 7], SamplingParams(max_tokens=400, ignore_eos=True))
    await stream.__anext__()
    os.kill(engine._process.pid, signal.SIGKILL)
    with pytest.raises(EngineDeadError):
        async for _ in stream:
            pass
    assert engine.died.is_set() and not engine.is_running
    with pytest.raises(EngineDeadError):
        await collect(engine, [1, 2])


def test_an_engine_that_cannot_start_raises_its_error(tiny_model_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        EngineProcess(str(tiny_model_dirs["llama"]), max_model_len=10**7, **OPTIONS)
