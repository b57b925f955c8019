"""With speculation on, greedy output is token-identical to transformers'
greedy output (and so to non-speculative output) in every engine regime."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix import LLM, SamplingParams
from tests.regimes import REGIMES, run_regime


@pytest.mark.parametrize("regime", REGIMES)
def test_unrelated_draft_in_every_regime(regime: str, tiny_model_dirs: dict[str, Path], unrelated_draft_dir: Path,
                                         greedy_prompts: list[list[int]], greedy_expected: list[list[int]]) -> None:
    llm = run_regime(regime, tiny_model_dirs["llama"], greedy_prompts, greedy_expected,
                     draft_model=str(unrelated_draft_dir), speculation_mode="fixed")
    stats = llm.stats()
    assert stats["spec_draft_tokens"] > 0
    assert stats["acceptance_rate"] < 0.3  # an unrelated draft is almost never right


@pytest.mark.parametrize("k", [1, 4, 8])
def test_draft_equal_to_target_accepts_everything(k: int, tiny_model_dirs: dict[str, Path],
                                                  greedy_prompts: list[list[int]],
                                                  greedy_expected: list[list[int]]) -> None:
    target = tiny_model_dirs["llama"]
    llm = run_regime("swap", target, greedy_prompts, greedy_expected, draft_model=str(target),
                     num_speculative_tokens=k, speculation_mode="fixed")
    stats = llm.stats()
    assert stats["acceptance_rate"] == 1.0
    assert stats["mean_accepted_length"] > 1.0 + 0.5 * k


@pytest.mark.parametrize("regime", ["ample", "aborts"])
def test_ngram_proposer(regime: str, tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]],
                        greedy_expected: list[list[int]]) -> None:
    llm = run_regime(regime, tiny_model_dirs["llama"], greedy_prompts, greedy_expected,
                     speculative_method="ngram", speculation_mode="fixed")
    assert llm.stats()["spec_draft_tokens"] > 0


def test_adaptive_mode_stops_speculating_with_a_useless_draft(tiny_model_dirs: dict[str, Path],
                                                              unrelated_draft_dir: Path,
                                                              greedy_prompts: list[list[int]],
                                                              greedy_expected: list[list[int]]) -> None:
    options = dict(draft_model=str(unrelated_draft_dir))
    fixed = run_regime("ample", tiny_model_dirs["llama"], greedy_prompts, greedy_expected,
                       speculation_mode="fixed", **options)
    adaptive = run_regime("ample", tiny_model_dirs["llama"], greedy_prompts, greedy_expected, **options)
    assert adaptive.stats()["spec_draft_tokens"] < 0.25 * fixed.stats()["spec_draft_tokens"]


@pytest.mark.parametrize("penalties", [
    {"presence_penalty": 2.0, "frequency_penalty": 2.0},
    {"repetition_penalty": 1.4},
    {"min_tokens": 12},
], ids=["presence-frequency", "repetition", "min-tokens"])
def test_draft_samplers_see_earlier_drafts(penalties: dict[str, float], tiny_model_dirs: dict[str, Path],
                                          greedy_prompts: list[list[int]]) -> None:
    """Penalties and min_tokens read the tokens so far, drafts included: a draft
    equal to the target proposes exactly the target's choices only if each draft
    pass sees the drafts before it."""
    target = str(tiny_model_dirs["llama"])
    # Repetitive prompts invite repeats for the penalties to refuse; stop tokens that
    # greedy continuations reach early make min_tokens bite.
    prompts = greedy_prompts[:12] + [[token] * 16 for token in range(5, 200, 15)]
    params = SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=list(range(1, 40)), **penalties)
    plain = LLM(target, num_kv_blocks=512, block_size=4).generate(prompts, params, use_tqdm=False)
    llm = LLM(target, draft_model=target, num_kv_blocks=512, block_size=4, num_speculative_tokens=4,
              speculation_mode="fixed")
    speculative = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in speculative] == [o.outputs[0].token_ids for o in plain]
    stats = llm.stats()
    assert stats["spec_draft_tokens"] > 0 and stats["acceptance_rate"] == 1.0
