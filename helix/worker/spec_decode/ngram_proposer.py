"""Prompt-lookup proposer: no model, no cache, deterministic proposals."""

from __future__ import annotations

from typing import Sequence

from helix.scheduler.outputs import ScheduledRequest
from helix.worker.spec_decode.ngram import propose_ngram
from helix.worker.spec_decode.proposal import Proposal, Proposals, RowFactory


class NgramProposer:
    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(self, scheduled: Sequence[ScheduledRequest], row_for: RowFactory) -> Proposals:
        proposals = Proposals()
        for item in scheduled:
            if item.num_spec_tokens:
                tokens = propose_ngram(item.request.all_token_ids, item.num_spec_tokens, self.max_ngram,
                                       self.min_ngram)
                proposals.by_request[item.request.request_id] = Proposal(tokens, None)
        return proposals

    def swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None:
        return None
