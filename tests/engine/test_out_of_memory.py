"""An out-of-memory error in a step fails only the request that caused it:
the largest one in the step. Every other request in the step runs again in
the next step and produces the tokens it would have produced anyway; the
engine keeps serving and every block returns to the pool."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix import LLM, SamplingParams
from helix.engine import AsyncEngine, RequestFailedError
from tests.reference import hf_greedy

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
SHORT_PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]]
LONG_PROMPT = [(3 * i) % 200 + 1 for i in range(50)]


def fail_forwards_over(model: torch.nn.Module, max_tokens: int) -> list[int]:
    """Make `model` raise torch.OutOfMemoryError on forwards of more than
    `max_tokens` tokens; returns the list of refused forward sizes."""
    forward, refused = model.forward, []

    def limited(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if input_ids.numel() > max_tokens:
            refused.append(input_ids.numel())
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return forward(input_ids, *args, **kwargs)

    model.forward = limited
    return refused


def assert_all_blocks_free(stats: dict[str, Any]) -> None:
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert stats["running"] == stats["waiting"] == stats["swapped"] == 0


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
def test_out_of_memory_fails_only_the_largest_request(tiny_model_dirs: dict[str, Path], speculative: bool) -> None:
    options: dict[str, Any] = dict(num_kv_blocks=256, block_size=4, check_invariants=True)
    if speculative:
        options.update(draft_model=str(tiny_model_dirs["llama"]), num_speculative_tokens=3)
    llm = LLM(str(tiny_model_dirs["llama"]), **options)
    # The first step holds 3 x 6 short prompt tokens and the 50-token prompt: over the limit.
    refused = fail_forwards_over(llm.engine.runner.model, max_tokens=40)
    outputs = llm.generate(SHORT_PROMPTS + [LONG_PROMPT], GREEDY, use_tqdm=False)

    assert refused == [68]
    failed = outputs[-1]
    assert failed.outputs[0].finish_reason == "error" and failed.outputs[0].token_ids == []
    assert "out of memory" in failed.error
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], torch_dtype=torch.float32)
    for prompt, output in zip(SHORT_PROMPTS, outputs):
        assert output.error is None and output.outputs[0].finish_reason == "length"
        assert output.outputs[0].token_ids == hf_greedy(reference, prompt, GREEDY.max_tokens)
    assert_all_blocks_free(llm.stats())
    # The engine carries on: the same long prompt runs once memory allows it.
    del llm.engine.runner.model.forward  # memory is back
    again = llm.generate([LONG_PROMPT], GREEDY, use_tqdm=False)[0].outputs[0]
    assert again.token_ids == hf_greedy(reference, LONG_PROMPT, GREEDY.max_tokens)
    assert_all_blocks_free(llm.stats())


def test_repeated_out_of_memory_fails_one_request_per_step(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)
    prompts = [list(range(1, 1 + length)) for length in (30, 6, 25, 20)]
    refused = fail_forwards_over(llm.engine.runner.model, max_tokens=30)
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    # 81 tokens: fail the 30; 51: fail the 25; 26 fits.
    assert refused == [81, 51]
    assert [o.outputs[0].finish_reason for o in outputs] == ["error", "length", "error", "length"]
    assert_all_blocks_free(llm.stats())


async def test_async_stream_of_the_failed_request_raises(tiny_model_dirs: dict[str, Path]) -> None:
    engine = AsyncEngine(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)
    fail_forwards_over(engine.core.runner.model, max_tokens=40)

    async def final(prompt: list[int]) -> Any:
        return [out async for out in engine.generate(prompt, GREEDY)][-1]

    try:
        short, long = await asyncio.gather(final(SHORT_PROMPTS[0]), final(LONG_PROMPT), return_exceptions=True)
        assert isinstance(long, RequestFailedError) and "out of memory" in str(long)
        assert len(short.outputs[0].token_ids) == GREEDY.max_tokens
        assert engine.is_running
        assert_all_blocks_free(engine.stats())
    finally:
        await engine.shutdown()


def greedy_reference(model_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    reference = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return [hf_greedy(reference, prompt, GREEDY.max_tokens) for prompt in prompts]


def run_with_long_prompt_arriving(llm: LLM) -> dict[str, Any]:
    """Short prompts decode (scheduled ahead); then the long prompt joins a step."""
    engine = llm.engine
    for i, prompt in enumerate(SHORT_PROMPTS):
        engine.add_request(f"short{i}", prompt, GREEDY)
    finished: dict[str, Any] = {}
    for step in range(200):
        if step == 3:
            engine.add_request("long", LONG_PROMPT, GREEDY)
        for output in engine.step():
            assert output.request_id not in finished, "answered twice"
            if output.finished:
                finished[output.request_id] = output
        if step > 3 and not engine.has_unfinished():
            break
    return finished


def test_out_of_memory_in_a_step_scheduled_ahead(tiny_model_dirs: dict[str, Path]) -> None:
    """The step in flight keeps its results; the failed step scheduled ahead of them is dropped."""
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, async_scheduling=True)
    refused = fail_forwards_over(llm.engine.runner.model, max_tokens=40)
    finished = run_with_long_prompt_arriving(llm)
    assert refused == [53]  # 3 decode tokens + the 50-token prompt
    assert finished["long"].outputs[0].finish_reason == "error"
    expected = greedy_reference(tiny_model_dirs["llama"], SHORT_PROMPTS)
    assert [finished[f"short{i}"].outputs[0].token_ids for i in range(3)] == expected
    assert_all_blocks_free(llm.stats())


def test_out_of_memory_reading_results_drops_the_step_scheduled_ahead(tiny_model_dirs: dict[str, Path]) -> None:
    """Results lost while the next step runs on them: both steps are dropped and run again."""
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, async_scheduling=True)
    runner = llm.engine.runner
    launch, launches = runner.launch, [0]

    def failing_once(step: Any) -> Any:
        finish = launch(step)
        launches[0] += 1
        if launches[0] != 5 or not any(s.request.request_id == "long" for s in step.scheduled):
            return finish

        def fail() -> Any:
            finish()
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return fail

    runner.launch = failing_once
    finished = run_with_long_prompt_arriving(llm)
    assert launches[0] > 5
    assert finished["long"].outputs[0].finish_reason == "error"
    expected = greedy_reference(tiny_model_dirs["llama"], SHORT_PROMPTS)
    assert [finished[f"short{i}"].outputs[0].token_ids for i in range(3)] == expected
    assert_all_blocks_free(llm.stats())
