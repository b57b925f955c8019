"""Benchmark-only acceptance by a seeded coin.

With random ("dummy") weights a draft model agrees with its target about as
often as chance, so speculative decoding cannot be measured at realistic
acceptance rates. `SyntheticAcceptance(a)` keeps every draft and verify
computation real but decides acceptance by a coin of probability `a` per draft
position: the emitted tokens are the accepted drafts plus the target's own
choice at the first rejected position (or the bonus position), so the step's
shape and host work match a real verify whose acceptance rate is `a`. The
output is not the target's distribution; it exists only for benchmarks.
"""

from __future__ import annotations

import random

import torch

from helix.worker.sampler import draw


class SyntheticAcceptance:
    def __init__(self, rate: float, seed: int):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"spec_synthetic_acceptance: must be in [0, 1], got {rate}")
        self.rate = rate
        self._coin = random.Random(seed)

    def __call__(self, draft_tokens: list[int], draft_probs: torch.Tensor | None, target_logits: torch.Tensor,
                 greedy: bool, generator: torch.Generator | None) -> list[int]:
        """Same contract as `rejection_sample`: the accepted drafts plus one target token."""
        accepted = 0
        while accepted < len(draft_tokens) and self._coin.random() < self.rate:
            accepted += 1
        row = target_logits[accepted]  # [vocab], transformed by the request's sampling settings
        token = int(row.argmax()) if greedy else draw(row.softmax(dim=-1), generator)
        return list(draft_tokens[:accepted]) + [token]
