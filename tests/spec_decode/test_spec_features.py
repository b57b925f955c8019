"""Speculation with the rest of the engine: sampling distribution, limits,
logprobs, n > 1, per-request metrics and the draft compatibility check."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2_contingency
from transformers import AutoModelForCausalLM

from helix import LLM, SamplingParams
from tests.tiny_models import save_tiny_model

SIGNIFICANCE = 1e-3


@pytest.fixture(scope="module")
def spec_llm(tiny_model_dirs: dict[str, Path], unrelated_draft_dir: Path) -> LLM:
    return LLM(str(tiny_model_dirs["llama"]), draft_model=str(unrelated_draft_dir), speculation_mode="fixed",
               num_kv_blocks=1024, block_size=4, check_invariants=True)


@pytest.fixture(scope="module")
def plain_llm(tiny_model_dirs: dict[str, Path]) -> LLM:
    return LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=1024, block_size=4)


def first_tokens(llm: LLM, seed: int | None, samples: int,
                 prompt: tuple[int, ...] = (17, 18, 19)) -> list[tuple[int, ...]]:
    """seed None: unseeded requests, whose verify rows are decided in one batch."""
    params = [SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True, seed=None if seed is None else seed + i)
              for i in range(samples)]
    outputs = llm.generate([list(prompt)] * samples, params, use_tqdm=False)
    return [tuple(o.outputs[0].token_ids) for o in outputs]


def same_distribution(a: list[int], b: list[int]) -> bool:
    """Two-sample chi-square on the token histograms; rare tokens pooled into one bin."""
    counts_a, counts_b = Counter(a), Counter(b)
    common = [t for t in set(a) | set(b) if counts_a[t] + counts_b[t] >= 10]
    table = [[counts_a[t] for t in common] + [sum(v for t, v in counts_a.items() if t not in common)],
             [counts_b[t] for t in common] + [sum(v for t, v in counts_b.items() if t not in common)]]
    if table[0][-1] + table[1][-1] == 0:
        table = [row[:-1] for row in table]
    return chi2_contingency(table).pvalue > SIGNIFICANCE


def test_sampled_tokens_keep_the_target_distribution(spec_llm: LLM, plain_llm: LLM) -> None:
    with_spec = first_tokens(spec_llm, seed=0, samples=600)
    without = first_tokens(plain_llm, seed=100_000, samples=600)
    assert spec_llm.stats()["spec_draft_tokens"] > 0
    for position in range(3):
        assert same_distribution([t[position] for t in with_spec], [t[position] for t in without]), position


def test_unseeded_requests_decided_in_one_batch_keep_their_own_distributions(spec_llm: LLM,
                                                                            plain_llm: LLM) -> None:
    # Two prompts with different next-token distributions, interleaved in one
    # batch: a verdict read from another request's rows would show.
    prompts = [(17, 18, 19), (40, 41)]
    params = SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True)
    outputs = spec_llm.generate([list(p) for p in prompts] * 600, params, use_tqdm=False)
    plain = [first_tokens(plain_llm, seed=200_000 + 1000 * i, samples=600, prompt=p) for i, p in enumerate(prompts)]
    assert not same_distribution([t[0] for t in plain[0]], [t[0] for t in plain[1]])  # the mix-up would show
    for index, without in enumerate(plain):
        with_spec = [tuple(o.outputs[0].token_ids) for o in outputs[index::2]]
        for position in range(3):
            assert same_distribution([t[position] for t in with_spec], [t[position] for t in without]), (index,
                                                                                                       position)


def test_the_two_sample_test_has_power(plain_llm: LLM) -> None:
    # The same test must tell temperature 1 from temperature 0.6 on this model.
    hot = first_tokens(plain_llm, seed=0, samples=600)
    params = [SamplingParams(temperature=0.6, max_tokens=3, ignore_eos=True, seed=i) for i in range(600)]
    cool = [tuple(o.outputs[0].token_ids) for o in plain_llm.generate([[17, 18, 19]] * 600, params, use_tqdm=False)]
    assert not all(same_distribution([t[p] for t in hot], [t[p] for t in cool]) for p in range(3))


def test_seeded_requests_reproduce_with_speculation(spec_llm: LLM) -> None:
    params = SamplingParams(temperature=0.8, max_tokens=16, seed=42, ignore_eos=True)
    first = spec_llm.generate([[5, 6, 7]], params, use_tqdm=False)[0].outputs[0].token_ids
    batch = spec_llm.generate([[9, 8], [5, 6, 7], [1]], params, use_tqdm=False)
    assert batch[1].outputs[0].token_ids == first


def test_mixed_sampling_modes_in_one_batch_keep_their_own_tokens(spec_llm: LLM, plain_llm: LLM) -> None:
    # Greedy, unseeded and seeded requests are decided in separate batches of
    # rows within one step: each request must read back its own rows.
    greedy = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, max_tokens=16, seed=7, ignore_eos=True)
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    prompts = [[5, 6, 7], [9, 8], [1, 2, 3, 4], [11], [12, 13]]
    modes = [greedy, unseeded, seeded, greedy, unseeded]
    mixed = [o.outputs[0].token_ids for o in spec_llm.generate(prompts, modes, use_tqdm=False)]
    for index in (0, 3):
        alone = plain_llm.generate([prompts[index]], greedy, use_tqdm=False)[0].outputs[0].token_ids
        assert mixed[index] == alone
    assert mixed[2] == spec_llm.generate([prompts[2]], seeded, use_tqdm=False)[0].outputs[0].token_ids
    assert spec_llm.stats()["spec_draft_tokens"] > 0


def test_never_emits_past_max_tokens(tiny_model_dirs: dict[str, Path]) -> None:
    target = str(tiny_model_dirs["llama"])
    llm = LLM(target, draft_model=target, speculation_mode="fixed", num_speculative_tokens=8,
              num_kv_blocks=256, block_size=4, check_invariants=True)
    for max_tokens in (1, 3, 5, 11):
        output = llm.generate([[3, 4, 5]], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                              use_tqdm=False)[0].outputs[0]
        assert len(output.token_ids) == max_tokens and output.finish_reason == "length"
    assert llm.stats()["acceptance_rate"] == 1.0


def test_logprobs_and_metrics_per_request(tiny_model_dirs: dict[str, Path]) -> None:
    target = str(tiny_model_dirs["llama"])
    llm = LLM(target, draft_model=target, speculation_mode="fixed", num_kv_blocks=256, block_size=4)
    prompt = [31, 32, 33, 34, 35]
    output = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True, logprobs=2),
                          use_tqdm=False)[0].outputs[0]
    reference = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    with torch.no_grad():
        logprobs = reference(torch.tensor([prompt + output.token_ids])).logits[0].log_softmax(-1)
    assert [e.token_id for e in output.logprobs] == output.token_ids
    for step, entry in enumerate(output.logprobs):
        assert math.isclose(entry.logprob, float(logprobs[len(prompt) - 1 + step, entry.token_id]), abs_tol=1e-4)
        assert len(entry.top) == 2
    assert output.num_draft_tokens > 0 and output.acceptance_rate == 1.0


def test_n_completions_with_speculation(spec_llm: LLM) -> None:
    output = spec_llm.generate([[2, 3, 4]], SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=1,
                                                           ignore_eos=True), use_tqdm=False)[0]
    assert [len(c.token_ids) for c in output.outputs] == [8, 8, 8]
    stats = spec_llm.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]


def test_draft_with_another_vocabulary_is_refused(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    other = save_tiny_model("qwen2", tmp_path / "other")
    config = (other / "config.json").read_text().replace('"vocab_size": 384', '"vocab_size": 400')
    (other / "config.json").write_text(config)
    with pytest.raises(ValueError, match="draft_model: vocabulary size 400"):
        LLM(str(tiny_model_dirs["llama"]), draft_model=str(other), num_kv_blocks=64)


def test_stop_string_inside_an_accepted_run_trims_tokens(tiny_model_dirs: dict[str, Path]) -> None:
    target = str(tiny_model_dirs["llama"])
    plain = LLM(target, num_kv_blocks=256, block_size=4)
    spec = LLM(target, draft_model=target, speculation_mode="fixed", num_speculative_tokens=8, num_kv_blocks=256,
               block_size=4)
    prompt = [21, 22, 23]
    full = plain.generate([prompt], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0].text
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[full[8:11]])
    expected = plain.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    actual = spec.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    assert actual.finish_reason == "stop" == expected.finish_reason
    assert (actual.text, actual.token_ids) == (expected.text, expected.token_ids)
    assert spec.stats()["mean_accepted_length"] > 4  # tokens after the stop were accepted, then dropped


def test_prefix_cache_hits_with_speculation(tiny_model_dirs: dict[str, Path], unrelated_draft_dir: Path) -> None:
    target = str(tiny_model_dirs["llama"])
    shared = list(range(40, 70))  # 30 tokens: 7 full blocks of 4 shared by every prompt
    prompts = [shared + [5], shared + [6, 7], shared + [5]]
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    plain = LLM(target, num_kv_blocks=256, block_size=4, enable_prefix_caching=False)
    expected = [o.outputs[0].token_ids for o in plain.generate(prompts, greedy, use_tqdm=False)]
    for draft in (target, str(unrelated_draft_dir)):
        spec = LLM(target, draft_model=draft, speculation_mode="fixed", num_kv_blocks=256, block_size=4)
        first = spec.generate(prompts[:1], greedy, use_tqdm=False)
        rest = spec.generate(prompts[1:], greedy, use_tqdm=False)
        assert all(o.num_cached_tokens >= 28 for o in rest), "later prompts should hit the cached prefix"
        assert [o.outputs[0].token_ids for o in first + rest] == expected
