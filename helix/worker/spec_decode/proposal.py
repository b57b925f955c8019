"""What a proposer hands to verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from helix.scheduler.outputs import ScheduledRequest
from helix.scheduler.request import Request
from helix.worker.sampler import SamplingRow

# Sampling settings of a request at the position after `extra_tokens` (drafts so far).
RowFactory = Callable[[Request, Sequence[int]], SamplingRow]


@dataclass(frozen=True)
class Proposal:
    token_ids: list[int]
    draft_probs: torch.Tensor | None  # [len(token_ids), vocab] q; None: deterministic (one-hot q)


@dataclass
class Proposals:
    by_request: dict[str, Proposal] = field(default_factory=dict)
    draft_computed: dict[str, int] = field(default_factory=dict)  # new draft-cache coverage per request
    num_passes: int = 0


class Proposer(Protocol):
    def propose(self, scheduled: Sequence[ScheduledRequest], row_for: RowFactory) -> Proposals: ...

    def swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None: ...
