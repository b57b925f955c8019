"""Rejection sampling: unit cases, and the emitted distribution equals p."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import helix.worker.spec_decode.rejection_sampler as rs
from helix.worker.spec_decode.rejection_sampler import decide_rows, emitted_tokens

VOCAB = 12
SIGNIFICANCE = 1e-3  # a correct sampler fails a test at this level 0.1% of the time; seeds are fixed


def logits_for(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp(min=1e-30).log()


def one_hot_rows(tokens: list[int], vocab: int = VOCAB) -> torch.Tensor:
    rows = torch.zeros(len(tokens), vocab)
    rows[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
    return rows


def sample_batch(drafts: list[list[int]], draft_probs: list[torch.Tensor | None], target_logits: list[torch.Tensor],
                 greedy: bool, generator: torch.Generator | None) -> list[list[int]]:
    """Emitted tokens of several requests whose verify rows are decided in one
    batch: request i has drafts[i], q rows draft_probs[i] ([k, V]; None: one-hot)
    and target logits [k + 1, V]."""
    tested = torch.tensor([token for tokens in drafts for token in tokens + [-1]])
    probs = None if greedy else torch.cat([
        part for tokens, q in zip(drafts, draft_probs)
        for part in ((q if q is not None else one_hot_rows(tokens)), torch.zeros(1, VOCAB))])
    decided = [t.tolist() for t in decide_rows(torch.cat(target_logits), tested, probs, greedy, generator)]
    emitted, first = [], 0
    for tokens in drafts:
        rows = slice(first, first + len(tokens) + 1)
        first = rows.stop
        stopping = decided[-1][rows]
        accepted = [t == s for t, s in zip(tokens, stopping)] if greedy else decided[0][rows]
        emitted.append(emitted_tokens(tokens, accepted, stopping))
    return emitted


def rejection_sample(drafts: list[int], draft_probs: torch.Tensor | None, target_logits: torch.Tensor, greedy: bool,
                     generator: torch.Generator | None) -> list[int]:
    return sample_batch([drafts], [draft_probs], [target_logits], greedy, generator)[0]


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
    firsts = [tokens[0] for tokens in sample_batch([[0]] * 2000, [None] * 2000, [logits_for(p)] * 2000, False,
                                                   generator)]
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
    """Histogram of the emitted token at each position over many trials, decided
    as one batch of `trials` requests (drafts drawn from q)."""
    generator = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q, trials, replacement=True, generator=generator).T.tolist()  # [trials, positions]
    counts = [np.zeros(VOCAB) for _ in range(p.shape[0])]
    for emitted in sample_batch(drafts, [q] * trials, [logits_for(p)] * trials, False, generator):
        for position, token in enumerate(emitted):
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
