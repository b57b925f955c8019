"""Exact rejection sampling of draft tokens (Leviathan et al. 2022; Chen et al. 2023).

Draft token x_i, proposed from q_i, is accepted with probability
min(1, p_i(x_i) / q_i(x_i)). At the first rejection the emitted token is drawn
from normalize(max(p_i - q_i, 0)) and the rest are dropped; when all K are
accepted a bonus token is drawn from p_K. Each emitted token then has exactly
the target distribution p. Greedy requests accept while the draft token is the
target's argmax, and emit the argmax at the first mismatch.

The work splits in two. On the device, for a whole batch of verify rows at
once and before anything is read back (`decide_rows`): each row's acceptance
test and the token to emit should the chain stop at that row (a residual draw
at a draft row, a draw from p at the bonus row). Every row's draws are
independent, so drawing at rows that end up unused leaves the emitted tokens'
distribution as it is. On the host, per request (`emitted_tokens`): the
accepted prefix and the token where it stops.
"""

from __future__ import annotations

from typing import Protocol

import torch

from helix.worker.sampler import draw_rows


class Acceptance(Protocol):
    """Decides which drafts a verify keeps: on the host from each row's test and
    stopping token (`__call__`), or on the device for greedy rounds chained
    there (`coins`: bool tests to apply in place of the model's, or None to
    apply the model's own)."""

    def __call__(self, draft_tokens: list[int], accepted: list[bool], stopping: list[int]) -> list[int]: ...

    def coins(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None: ...


class ExactAcceptance:
    """The model's own verdicts."""

    def __call__(self, draft_tokens: list[int], accepted: list[bool], stopping: list[int]) -> list[int]:
        return emitted_tokens(draft_tokens, accepted, stopping)

    def coins(self, shape: tuple[int, ...], device: torch.device) -> None:
        return None


def residual_distribution(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """Row-wise normalize(max(p - q, 0)) of [n, vocab] rows; p where p <= q
    everywhere (then p == q up to rounding, and a rejection had probability ~0).
    A zero q row (the bonus row) gives p."""
    residual = (target_probs - draft_probs).clamp(min=0.0)
    total = residual.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, residual / total.clamp(min=1e-30), target_probs)


def decide_rows(target_logits: torch.Tensor, draft_tokens: torch.Tensor | None, draft_probs: torch.Tensor | None,
                greedy: bool, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Queue the verdicts of verify rows that share one sampling mode and generator.

    target_logits: [R, vocab], transformed by each row's sampling settings.
    Greedy: returns [argmax [R]]; a draft is accepted where it equals its
    row's argmax, which the host checks. Sampled: draft_tokens [R] is the draft
    each row tests (-1 on bonus rows), draft_probs [R, vocab] its q (one-hot
    for a deterministic proposer, zero on bonus rows); returns [accepted [R]
    bool, stopping token [R]].
    """
    if greedy:
        return [target_logits.argmax(dim=-1)]
    assert draft_tokens is not None and draft_probs is not None
    target_probs = target_logits.softmax(dim=-1)
    tested = draft_tokens.clamp(min=0).unsqueeze(1)
    p = target_probs.gather(1, tested).squeeze(1)
    q = draft_probs.gather(1, tested).squeeze(1)
    uniforms = torch.rand(p.shape, generator=generator, device=p.device)
    accepted = (draft_tokens >= 0) & (uniforms * q < p)  # u < p / q without dividing
    return [accepted, draw_rows(residual_distribution(target_probs, draft_probs), generator)]


def emitted_tokens(draft_tokens: list[int], accepted: list[bool], stopping: list[int]) -> list[int]:
    """The accepted prefix of the drafts, then the stopping token of the row
    where it ends (len(draft_tokens) + 1 rows)."""
    for i, token in enumerate(draft_tokens):
        if not accepted[i]:
            return draft_tokens[:i] + [stopping[i]]
    return draft_tokens + [stopping[len(draft_tokens)]]
