"""Rejection sampling: unit cases, and the emitted distribution equals p."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import helix.worker.spec_decode.rejection_sampler as rs
from helix.worker.spec_decode.rejection_sampler import rejection_sample

VOCAB = 12
SIGNIFICANCE = 1e-3  # a correct sampler fails a test at this level 0.1% of the time; seeds are fixed


def logits_for(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp(min=1e-30).log()


def one_hot_rows(tokens: list[int], vocab: int = VOCAB) -> torch.Tensor:
    rows = torch.zeros(len(tokens), vocab)
    rows[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return rows


def test_all_accepted_then_bonus_from_p() -> None:
    p = one_hot_rows([3, 5, 7])  # p is certain, q agrees: every draft is accepted
    emitted = rejection_sample([3, 5], one_hot_rows([3, 5]), logits_for(p), greedy=False,
                               generator=torch.Generator().manual_seed(0))
    assert emitted == [3, 5, 7]


def test_first_token_rejected_resamples_from_the_residual() -> None:
    p = one_hot_rows([4, 1])
    q = one_hot_rows([2])  # p(2) = 0: always rejected; residual is all on token 4
    emitted = rejection_sample([2], q, logits_for(p), greedy=False, generator=torch.Generator().manual_seed(0))
    assert emitted == [4]


def test_zero_drafts_samples_one_token_from_p() -> None:
    p = one_hot_rows([9])
    assert rejection_sample([], None, logits_for(p), greedy=False, generator=None) == [9]
    assert rejection_sample([], None, logits_for(p), greedy=True, generator=None) == [9]


def test_greedy_mismatch_in_the_middle() -> None:
    target = torch.randn(4, VOCAB)
    argmax = target.argmax(-1).tolist()
    drafts = [argmax[0], (argmax[1] + 1) % VOCAB, argmax[2]]
    assert rejection_sample(drafts, None, target, greedy=True, generator=None) == [argmax[0], argmax[1]]
    assert rejection_sample(argmax[:3], None, target, greedy=True, generator=None) == argmax


def test_deterministic_proposal_uses_one_hot_q() -> None:
    # q one-hot on the draft: accept with probability p(x); the residual excludes x.
    p = torch.tensor([[0.5, 0.5] + [0.0] * (VOCAB - 2), [1.0] + [0.0] * (VOCAB - 1)])
    generator = torch.Generator().manual_seed(1)
    firsts = [rejection_sample([0], None, logits_for(p), False, generator)[0] for _ in range(2000)]
    share_of_zero = firsts.count(0) / len(firsts)
    assert 0.45 < share_of_zero < 0.55 and set(firsts) == {0, 1}


def fixed_distributions(seed: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """p [positions + 1, V] and q [positions, V]; q has mass where p has none, and one row p = q."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.rand(positions + 1, VOCAB, generator=generator) ** 3
    p[:, :2] = 0.0  # tokens 0 and 1 impossible under p ...
    q = torch.rand(positions, VOCAB, generator=generator) ** 3
    q[0, 0] += 0.5  # ... but likely under q at position 0
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    q[1] = p[1]  # p = q at position 1
    q[2] = 0.7 * p[2] + 0.3 * q[2]  # a close draft at position 2, so position 3 is reached often
    return p, q


def emitted_counts(p: torch.Tensor, q: torch.Tensor, trials: int, seed: int) -> list[np.ndarray]:
    """Histogram of the emitted token at each position over many seeded trials."""
    generator = torch.Generator().manual_seed(seed)
    counts = [np.zeros(VOCAB) for _ in range(p.shape[0])]
    for _ in range(trials):
        drafts = [int(torch.multinomial(q[i], 1, generator=generator)) for i in range(q.shape[0])]
        for position, token in enumerate(rejection_sample(drafts, q, logits_for(p), False, generator)):
            counts[position][token] += 1
    return counts


def matches(counts: np.ndarray, probs: torch.Tensor) -> bool:
    expected = probs.double().numpy() * counts.sum()
    support = expected > 0
    if counts[~support].sum() > 0:
        return False  # a token p gives zero probability was emitted
    expected = expected[support] * counts.sum() / expected[support].sum()  # exact totals for scipy
    return chisquare(counts[support], expected).pvalue > SIGNIFICANCE


def test_emitted_tokens_follow_p_at_every_position() -> None:
    p, q = fixed_distributions(seed=0, positions=3)
    counts = emitted_counts(p, q, trials=6000, seed=1)
    for position in range(p.shape[0]):
        assert counts[position].sum() > 300, "too few samples reach this position to test it"
        assert matches(counts[position], p[position]), f"position {position}"


def test_the_distribution_test_catches_a_wrong_residual(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sampling the correction from p instead of max(p - q, 0) biases the output;
    # the same test must notice, or it proves nothing.
    monkeypatch.setattr(rs, "residual_distribution", lambda target, draft: target)
    p, q = fixed_distributions(seed=0, positions=3)
    counts = emitted_counts(p, q, trials=6000, seed=1)
    assert not matches(counts[0], p[0])
