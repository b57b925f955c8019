"""Exact rejection sampling of draft tokens (Leviathan et al. 2022; Chen et al. 2023).

Draft token x_i, proposed from q_i, is accepted with probability
min(1, p_i(x_i) / q_i(x_i)). At the first rejection the emitted token is drawn
from normalize(max(p_i - q_i, 0)) and the rest are dropped; when all K are
accepted a bonus token is drawn from p_K. Each emitted token then has exactly
the target distribution p. Greedy requests accept while the draft token is the
target's argmax, and emit the argmax at the first mismatch.
"""

from __future__ import annotations

from typing import Callable

import torch

from helix.worker.sampler import draw

# (draft tokens, draft probs [k, vocab] or None, transformed target logits [k + 1, vocab], greedy, generator)
# -> emitted tokens
AcceptFn = Callable[[list[int], torch.Tensor | None, torch.Tensor, bool, torch.Generator | None], list[int]]


def residual_distribution(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """normalize(max(p - q, 0)); falls back to p where p <= q everywhere (then p == q
    up to rounding, and a rejection had probability ~0)."""
    residual = (target_probs - draft_probs).clamp(min=0.0)
    total = residual.sum()
    return residual / total if total > 0 else target_probs


def rejection_sample(draft_tokens: list[int], draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
                     greedy: bool, generator: torch.Generator | None) -> list[int]:
    """Tokens to emit: the accepted prefix of `draft_tokens` plus one more.

    draft_probs: [k, vocab] q at each draft position (None: the proposer was
    deterministic, i.e. q is one-hot on the proposed token). target_logits:
    [k + 1, vocab], already transformed by the request's sampling settings.
    """
    if greedy:
        return _greedy_accept(draft_tokens, target_logits.argmax(dim=-1).tolist())
    target_probs = target_logits.softmax(dim=-1)
    uniforms = torch.rand(len(draft_tokens), generator=generator, device=target_logits.device).tolist()
    emitted: list[int] = []
    for i, token in enumerate(draft_tokens):
        p = float(target_probs[i, token])
        q = 1.0 if draft_probs is None else float(draft_probs[i, token])
        if uniforms[i] * q < p:  # u < p / q without dividing
            emitted.append(token)
            continue
        q_row = _one_hot(token, target_probs.shape[1], target_probs) if draft_probs is None else draft_probs[i]
        emitted.append(draw(residual_distribution(target_probs[i], q_row), generator))
        return emitted
    emitted.append(draw(target_probs[len(draft_tokens)], generator))
    return emitted


def _greedy_accept(draft_tokens: list[int], target_argmax: list[int]) -> list[int]:
    emitted = []
    for i, token in enumerate(draft_tokens):
        emitted.append(target_argmax[i])
        if token != target_argmax[i]:
            return emitted
    emitted.append(target_argmax[len(draft_tokens)])
    return emitted


def _one_hot(token: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    row = torch.zeros(vocab, dtype=like.dtype, device=like.device)
    row[token] = 1.0
    return row
