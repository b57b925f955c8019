"""32 prompts through the engine give transformers' greedy tokens, under
ample blocks, forced preemption with swap, recompute only and random aborts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix import LLM, SamplingParams
from helix.outputs import RequestOutput
from tests.reference import hf_greedy
from tests.tiny_models import VOCAB_SIZE

MAX_TOKENS = 20
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randrange(1, 60))] for _ in range(32)]


@pytest.fixture(scope="module")
def expected(tiny_model_dirs: dict[str, Path], prompts: list[list[int]]) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], dtype=torch.float32).eval()
    return [hf_greedy(model, p, MAX_TOKENS) for p in prompts]


def make_llm(model_dir: Path, **kwargs) -> LLM:
    options = dict(block_size=4, max_num_batched_tokens=128, check_invariants=True)
    return LLM(str(model_dir), **{**options, **kwargs})


def assert_drained(llm: LLM) -> None:
    stats = llm.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    assert stats["cpu_swap_blocks_used"] == 0
    assert stats["running"] == stats["waiting"] == stats["swapped"] == 0


def assert_matches(outputs: list[RequestOutput], prompts: list[list[int]], expected: list[list[int]]) -> None:
    assert len(outputs) == len(prompts)
    for output, prompt, tokens in zip(outputs, prompts, expected):
        assert output.prompt_token_ids == prompt
        assert output.outputs[0].token_ids == tokens
        assert output.outputs[0].finish_reason == "length"


def test_ample_blocks(tiny_model_dirs, prompts, expected) -> None:
    llm = make_llm(tiny_model_dirs["llama"], num_kv_blocks=1024)
    assert_matches(llm.generate(prompts, GREEDY, use_tqdm=False), prompts, expected)
    assert llm.stats()["preemptions"] == 0
    assert_drained(llm)


def test_small_budget_forces_preemption_and_swap(tiny_model_dirs, prompts, expected) -> None:
    llm = make_llm(tiny_model_dirs["llama"], num_kv_blocks=48, swap_space=1.0)
    assert_matches(llm.generate(prompts, GREEDY, use_tqdm=False), prompts, expected)
    stats = llm.stats()
    assert stats["swapped_out"] > 0 and stats["swapped_in"] == stats["swapped_out"]
    assert_drained(llm)


def test_recompute_only(tiny_model_dirs, prompts, expected) -> None:
    llm = make_llm(tiny_model_dirs["llama"], num_kv_blocks=48, swap_space=0)
    assert_matches(llm.generate(prompts, GREEDY, use_tqdm=False), prompts, expected)
    stats = llm.stats()
    assert stats["recomputed"] > 0 and stats["swapped_out"] == 0
    assert_drained(llm)


def test_swap_space_full_falls_back_to_recompute(tiny_model_dirs, prompts, expected) -> None:
    # 4 KiB of swap holds 4 blocks of this model: some preemptions swap, the rest recompute.
    llm = make_llm(tiny_model_dirs["llama"], num_kv_blocks=48, swap_space=4 / (1 << 20))
    assert_matches(llm.generate(prompts, GREEDY, use_tqdm=False), prompts, expected)
    stats = llm.stats()
    assert stats["swapped_out"] > 0 and stats["recomputed"] > 0
    assert_drained(llm)


def test_random_aborts_mid_flight(tiny_model_dirs, prompts, expected) -> None:
    llm = make_llm(tiny_model_dirs["llama"], num_kv_blocks=48, swap_space=1.0)
    engine = llm.engine
    ids = [f"r{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, GREEDY)
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
    for request_id, prompt, tokens in zip(ids, prompts, expected):
        completion = finished[request_id].outputs[0]
        if completion.finish_reason == "abort":
            aborted += 1
            assert completion.token_ids == tokens[:len(completion.token_ids)]
        else:
            assert completion.token_ids == tokens
    assert aborted > 0
    assert_drained(llm)
