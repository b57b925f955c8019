"""32 prompts through the engine give transformers' greedy tokens, under
ample blocks, forced preemption with swap, recompute only and random aborts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.regimes import REGIMES, run_regime


@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_equals_transformers(regime: str, tiny_model_dirs: dict[str, Path],
                                    greedy_prompts: list[list[int]], greedy_expected: list[list[int]]) -> None:
    llm = run_regime(regime, tiny_model_dirs["llama"], greedy_prompts, greedy_expected)
    if regime == "ample":
        assert llm.stats()["preemptions"] == 0


def test_swap_space_full_falls_back_to_recompute(tiny_model_dirs: dict[str, Path],
                                                 greedy_prompts: list[list[int]],
                                                 greedy_expected: list[list[int]]) -> None:
    # 4 KiB of swap holds 4 blocks of this model: some preemptions swap, the rest recompute.
    llm = run_regime("swap", tiny_model_dirs["llama"], greedy_prompts, greedy_expected,
                     swap_space=4 / (1 << 20))
    assert llm.stats()["recomputed"] > 0
