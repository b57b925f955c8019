"""With speculation on, greedy output is token-identical to transformers'
greedy output (and so to non-speculative output) in every engine regime."""

from __future__ import annotations

from pathlib import Path

import pytest

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
