"""What a proposer hands to verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from helix.scheduler.outputs import ScheduledRequest
from helix.scheduler.request import Request
from helix.worker.device import HostCopy, to_device
from helix.worker.sampler import SamplingRow

# Sampling settings of a request at the position after `extra_tokens` (drafts so far).
RowFactory = Callable[[Request, Sequence[int]], SamplingRow]


@dataclass(frozen=True)
class Proposal:
    token_ids: list[int]  # filled by `Proposals.read_drafts` when the drafts were chosen on the device
    draft_probs: torch.Tensor | None  # [num drafts, vocab] q; None: deterministic (one-hot q)


@dataclass(frozen=True)
class DraftRows:
    """One depth of drafts, on the device: token_ids[i] is request_ids[i]'s draft."""

    request_ids: list[str]
    token_ids: torch.Tensor  # [len(request_ids)] int64


@dataclass
class Proposals:
    by_request: dict[str, Proposal] = field(default_factory=dict)
    draft_computed: dict[str, int] = field(default_factory=dict)  # new draft-cache coverage per request
    # Drafts chosen on the device, by depth, not yet on the host (empty: already there).
    on_device: list[DraftRows] = field(default_factory=list)
    _copy: HostCopy | None = None

    def start_reading(self) -> None:
        """Queue the device drafts' copy to the host (after the passes that choose
        them), for `read_drafts`; nothing to copy without device drafts."""
        if self.on_device:
            self._copy = HostCopy([rows.token_ids for rows in self.on_device])

    def tested_tokens(self, request_ids: Sequence[str], counts: Sequence[int], device: torch.device) -> torch.Tensor:
        """[sum(counts)] on the device: for each request's verify rows (counts[i] =
        1 + its drafts), the draft each row tests, then -1 for its bonus row."""
        if not self.on_device:
            values = [token for request_id, count in zip(request_ids, counts)
                      for token in self.by_request[request_id].token_ids[:count - 1] + [-1]]
            return to_device(values, torch.int64, device)
        flat = torch.cat([rows.token_ids for rows in self.on_device]
                         + [torch.full((1,), -1, dtype=torch.int64, device=device)])
        # Where each depth's drafts start in `flat`, and each request's row in them.
        starts, row_of, start = [], [], 0
        for rows in self.on_device:
            starts.append(start)
            start += len(rows.request_ids)
            row_of.append({request_id: i for i, request_id in enumerate(rows.request_ids)})
        bonus = start  # the -1
        index = [position for request_id, count in zip(request_ids, counts)
                 for position in [starts[d] + row_of[d][request_id] for d in range(count - 1)] + [bonus]]
        return flat[to_device(index, torch.int64, device)]

    def read_drafts(self) -> None:
        """Put the device drafts into each proposal's token_ids (waits for them)."""
        if self._copy is None:
            return
        for rows, host in zip(self.on_device, self._copy.wait()):
            for request_id, token in zip(rows.request_ids, host.tolist()):
                self.by_request[request_id].token_ids.append(token)
        self._copy = None


class Proposer(Protocol):
    def propose(self, scheduled: Sequence[ScheduledRequest], row_for: RowFactory) -> Proposals:
        """Draft for the speculating requests."""
        ...

    def swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None: ...
