"""Benchmark-only acceptance by a seeded coin.

With random ("dummy") weights a draft model agrees with its target about as
often as chance, so speculative decoding cannot be measured at realistic
acceptance rates. `SyntheticAcceptance(a)` keeps every draft and verify
computation real but decides acceptance by a coin of probability `a` per draft
position: the emitted tokens are the accepted drafts plus the verify's own
stopping token at the first rejected position (or the bonus position: the
target's argmax for greedy requests, a residual or bonus draw for sampled
ones), so the step's shape and host work match a real verify whose acceptance
rate is `a`. Greedy rounds chained on the device toss the coin there. The
output is not the target's distribution; it exists only for benchmarks.
"""

from __future__ import annotations

import random

import torch


class SyntheticAcceptance:
    def __init__(self, rate: float, seed: int, device: torch.device = torch.device("cpu")):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"spec_synthetic_acceptance: must be in [0, 1], got {rate}")
        self.rate = rate
        self._coin = random.Random(seed)
        self._device_coin = torch.Generator(device=device).manual_seed(seed)  # for rounds chained on the device

    def __call__(self, draft_tokens: list[int], accepted: list[bool], stopping: list[int]) -> list[int]:
        """Same contract as `emitted_tokens`, with the coin in place of the acceptance test."""
        num_accepted = 0
        while num_accepted < len(draft_tokens) and self._coin.random() < self.rate:
            num_accepted += 1
        return list(draft_tokens[:num_accepted]) + [stopping[num_accepted]]

    def coins(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Tests of `shape` (rounds decided on the device): a coin per draft in place of the model's test."""
        return torch.rand(shape, generator=self._device_coin, device=device) < self.rate
