"""Engine features end to end on a tiny model: seeds, prefix caching, n > 1,
stop strings, logprobs and prompt logprobs."""

from __future__ import annotations

import gc
import math
import random
import weakref
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix import LLM, SamplingParams
from tests.reference import hf_greedy
from tests.tiny_models import VOCAB_SIZE


@pytest.fixture(scope="module")
def llm(tiny_model_dirs: dict[str, Path]) -> LLM:
    return LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=512, block_size=4, check_invariants=True)


def random_prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randrange(3, 30))] for _ in range(count)]


def test_seeded_sampling_does_not_depend_on_the_batch(llm: LLM) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=15, seed=1234, ignore_eos=True)
    prompt = [11, 12, 13, 14]
    alone = llm.generate([prompt], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = random_prompts(7, seed=3)
    unseeded = SamplingParams(temperature=1.0, max_tokens=15, ignore_eos=True)
    batch = llm.generate(others[:4] + [prompt] + others[4:], [unseeded] * 4 + [seeded] + [unseeded] * 3,
                         use_tqdm=False)
    assert batch[4].outputs[0].token_ids == alone
    different_seed = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=15, seed=99, ignore_eos=True)
    assert llm.generate([prompt], different_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_prefix_cache_hits_give_the_same_tokens(tiny_model_dirs: dict[str, Path]) -> None:
    shared = random_prompts(1, seed=5)[0] * 3  # long enough for several full blocks
    prompts = [shared + [7], shared + [8, 9], shared + [7]]
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    cached = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)
    first = cached.generate(prompts[:1], greedy, use_tqdm=False)
    rest = cached.generate(prompts[1:], greedy, use_tqdm=False)
    assert rest[0].num_cached_tokens > 0 and rest[1].num_cached_tokens >= len(shared) // 4 * 4
    assert cached.stats()["prefix_cache_hit_rate"] > 0
    uncached = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, enable_prefix_caching=False)
    baseline = uncached.generate(prompts, greedy, use_tqdm=False)
    assert baseline[0].num_cached_tokens == 0
    assert [o.outputs[0].token_ids for o in first + rest] == [o.outputs[0].token_ids for o in baseline]


def test_n_completions_share_the_prompt_and_differ(llm: LLM) -> None:
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=5, ignore_eos=True)
    computed_before = llm.stats()["prompt_tokens"]
    output = llm.generate([list(range(1, 40))], params, use_tqdm=False)[0]
    # The prompt's 9 full blocks (36 tokens) are computed once, then shared by the siblings.
    assert llm.stats()["prompt_tokens"] - computed_before == 39 + 2 * (39 - 36)
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 12 for c in output.outputs)
    assert len({tuple(c.token_ids) for c in output.outputs}) > 1
    assert llm.stats()["gpu_blocks_free"] == llm.stats()["gpu_blocks_total"]


def test_stop_string_trims_text_and_finishes(llm: LLM) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    prompt = [21, 22, 23]
    full = llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].text
    stop = full[8:11]
    assert len(stop) == 3 and full.find(stop) >= 0
    stopped = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop]),
                           use_tqdm=False)[0].outputs[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[:full.find(stop)]
    kept = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop],
                                                 include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == full[:full.find(stop) + len(stop)]


def test_logprobs_match_transformers(llm: LLM, tiny_model_dirs: dict[str, Path]) -> None:
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], dtype=torch.float32).eval()
    prompt = [31, 32, 33, 34, 35]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    output = llm.generate([prompt], params, use_tqdm=False)[0]
    completion = output.outputs[0]
    assert completion.token_ids == hf_greedy(reference, prompt, 4)
    with torch.no_grad():
        logits = reference(torch.tensor([prompt + completion.token_ids])).logits[0].log_softmax(-1)
    for step, entry in enumerate(completion.logprobs):
        expected = logits[len(prompt) - 1 + step]
        assert math.isclose(entry.logprob, float(expected[entry.token_id]), abs_tol=1e-4)
        assert list(entry.top) == expected.topk(3).indices.tolist()
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
    for position, entry in enumerate(output.prompt_logprobs[1:], start=1):
        assert entry.token_id == prompt[position]
        assert math.isclose(entry.logprob, float(logits[position - 1][prompt[position]]), abs_tol=1e-4)
        assert len(entry.top) == 2


def test_text_prompts_are_tokenized(llm: LLM) -> None:
    output = llm.generate("The quick brown fox", SamplingParams(temperature=0.0, max_tokens=3), use_tqdm=False)[0]
    assert output.prompt == "The quick brown fox"
    assert output.prompt_token_ids == llm.tokenizer.encode("The quick brown fox")


def test_a_dropped_engine_releases_its_model(tiny_model_dirs: dict[str, Path]) -> None:
    """Offline users and benchmarks build engines one after another in one
    process: each must be collectable (its cycles included) once dropped."""
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=64, block_size=4)
    llm.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    model = weakref.ref(llm.engine.runner.model)
    del llm
    gc.collect()
    assert model() is None
