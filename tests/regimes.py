"""The four engine regimes every greedy-equivalence test runs under: ample
blocks, a budget that forces swapping, recompute only, and random aborts.

Each check runs 32 prompts, compares every completion with transformers'
greedy tokens (a prefix of them for aborted requests), and requires every
block back in the pool with the swap space empty."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from helix import LLM, SamplingParams
from helix.outputs import RequestOutput

REGIMES = ("ample", "swap", "recompute", "aborts")
_REGIME_OPTIONS: dict[str, dict[str, Any]] = {
    "ample": {"num_kv_blocks": 1024},
    "swap": {"num_kv_blocks": 48, "swap_space": 1.0},
    "recompute": {"num_kv_blocks": 48, "swap_space": 0},
    "aborts": {"num_kv_blocks": 48, "swap_space": 1.0},
}


def run_regime(regime: str, model_dir: Path, prompts: list[list[int]], expected: list[list[int]],
               **options: Any) -> LLM:
    params = SamplingParams(temperature=0.0, max_tokens=len(expected[0]), ignore_eos=True)
    llm = LLM(str(model_dir), block_size=4, max_num_batched_tokens=128, check_invariants=True,
              **{**_REGIME_OPTIONS[regime], **options})
    if regime == "aborts":
        _run_with_aborts(llm, prompts, expected, params)
    else:
        outputs = llm.generate(prompts, params, use_tqdm=False)
        assert [o.prompt_token_ids for o in outputs] == prompts
        for output, tokens in zip(outputs, expected):
            assert output.outputs[0].token_ids == tokens
            assert output.outputs[0].finish_reason == "length"
    stats = llm.stats()
    if regime == "swap":
        assert stats["swapped_out"] > 0 and stats["swapped_in"] == stats["swapped_out"]
    if regime == "recompute":
        assert stats["recomputed"] > 0 and stats["swapped_out"] == 0
    assert_drained(llm)
    return llm


def greedy_rerun_count(llm: LLM, count: Callable[[LLM], list[int]], prompts: list[list[int]],
                       expected: list[list[int]]) -> int:
    """Run the greedy prompts again on an engine `run_regime` built, with `count`
    wrapping it (it returns a counter whose [0] it increments); check the tokens
    against transformers' and the pool drained, and return the count."""
    counter = count(llm)
    params = SamplingParams(temperature=0.0, max_tokens=len(expected[0]), ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert_drained(llm)
    return counter[0]


def assert_drained(llm: LLM) -> None:
    stats = llm.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert stats["cpu_swap_blocks_used"] == 0
    assert stats["running"] == stats["waiting"] == stats["swapped"] == 0


def _run_with_aborts(llm: LLM, prompts: list[list[int]], expected: list[list[int]],
                     params: SamplingParams) -> None:
    engine = llm.engine
    ids = [f"r{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, params)
    rng = random.Random(11)
    finished: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for output in engine.step():
            assert output.request_id not in finished, "answered twice"
            if output.finished:
                finished[output.request_id] = output
        live = [i for i in ids if i not in finished]
        if live and rng.random() < 0.3:
            engine.abort(rng.choice(live))
    assert sorted(finished) == sorted(ids), "a request was lost"
    aborted = 0
    for request_id, tokens in zip(ids, expected):
        completion = finished[request_id].outputs[0]
        if completion.finish_reason == "abort":
            aborted += 1
            assert completion.token_ids == tokens[:len(completion.token_ids)]
        else:
            assert completion.token_ids == tokens
    assert aborted > 0
