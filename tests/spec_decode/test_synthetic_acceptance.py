"""Benchmark-only synthetic acceptance: a seeded coin of probability a decides
acceptance, the emitted tokens keep the verify's contract, and the server
refuses the option without --benchmark-mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helix import LLM, SamplingParams
from helix.cli import main
from helix.worker.spec_decode.synthetic import SyntheticAcceptance

K = 4
VOCAB = 50


def accepted_lengths(rate: float, trials: int, seed: int = 0) -> list[int]:
    accept = SyntheticAcceptance(rate, seed)
    generator = torch.Generator().manual_seed(seed)
    lengths = []
    for _ in range(trials):
        drafts = torch.randint(0, VOCAB, (K,), generator=generator).tolist()
        logits = torch.randn(K + 1, VOCAB, generator=generator)
        stopping = logits.argmax(dim=-1).tolist()  # a greedy verify's stopping tokens
        emitted = accept(drafts, [False] * K, stopping)  # the coin, not the test, decides
        accepted = len(emitted) - 1
        assert emitted[:accepted] == drafts[:accepted]
        assert emitted[-1] == stopping[accepted]
        lengths.append(accepted)
    return lengths


@pytest.mark.parametrize("rate", [0.5, 0.7, 0.9])
def test_each_position_is_accepted_with_probability_a(rate: float) -> None:
    trials = 4000
    lengths = accepted_lengths(rate, trials)
    for position in range(K):
        reached = sum(1 for n in lengths if n >= position)
        accepted = sum(1 for n in lengths if n > position)
        stderr = (rate * (1 - rate) / reached) ** 0.5
        assert abs(accepted / reached - rate) < 4 * stderr, (position, accepted / reached)


def test_extremes_and_seeding() -> None:
    assert set(accepted_lengths(0.0, 50)) == {0}
    assert set(accepted_lengths(1.0, 50)) == {K}
    assert accepted_lengths(0.6, 200, seed=3) == accepted_lengths(0.6, 200, seed=3)
    assert accepted_lengths(0.6, 200, seed=3) != accepted_lengths(0.6, 200, seed=4)
    with pytest.raises(ValueError, match="spec_synthetic_acceptance"):
        SyntheticAcceptance(1.5, 0)


def test_engine_acceptance_follows_the_coin(tiny_model_dirs: dict[str, Path], unrelated_draft_dir: Path) -> None:
    # An unrelated draft would be accepted rarely; the coin makes it about half the time.
    llm = LLM(str(tiny_model_dirs["llama"]), draft_model=str(unrelated_draft_dir), num_speculative_tokens=K,
              speculation_mode="fixed", spec_synthetic_acceptance=0.5, num_kv_blocks=256, block_size=4)
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    outputs = llm.generate([[3, 4, 5, 6], [7, 8, 9]] * 4, params, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 60 for o in outputs)
    stats = llm.stats()
    assert stats["spec_synthetic_acceptance"] == 0.5
    assert stats["spec_draft_tokens"] > 200 and 0.4 < stats["acceptance_rate_position_0"] < 0.6
    # Tokens per verify: E(4) = (1 - 0.5^5) / (1 - 0.5) = 1.94 (less where max_tokens cut K short).
    assert 1.6 < stats["mean_accepted_length"] < 2.2


def test_needs_speculation(tiny_model_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="spec_synthetic_acceptance: needs speculative decoding"):
        LLM(str(tiny_model_dirs["llama"]), spec_synthetic_acceptance=0.5, num_kv_blocks=64, block_size=4)


def test_server_refuses_it_without_benchmark_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--spec-synthetic-acceptance", "0.7"])
    assert exit_info.value.code == 2
    assert "--benchmark-mode" in capsys.readouterr().err
