"""Speculative rounds chained on the device.

A multi-step of speculative decoding runs R rounds for the same B requests,
each drafting K tokens and verifying them. Where a round starts depends on
how many drafts the rounds before kept, which only the device knows: round r
starts at the request's first position + r + (drafts kept so far). The host
stages every round at its lowest start (each earlier round emitted at least
one token) and the device adds the rest (`PositionShift`), so no round waits
for the host, and the host reads every round's verdicts once, at the end.
Greedy only: a round's verdict is the argmax comparison (`RoundInputs.advance`;
its kernels are in `round_kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helix.worker.device import HostCopy
from helix.worker.spec_decode.round_kernels import advance
from helix.worker.token_feed import PositionShift


@dataclass(frozen=True)
class RoundInputs:
    """What a round takes from the one before, per request, on the device."""

    last: torch.Tensor         # [B] the token at the round's first position (the last one known)
    before_last: torch.Tensor  # [B] the token one position before it
    shift: PositionShift       # drafts kept by the rounds before: the round starts that much later

    @classmethod
    def first(cls, last: torch.Tensor) -> RoundInputs:
        """Round 0's: its start is known on the host (no shift). Its pass A is the
        ordinary catch-up, so `before_last` is not read."""
        return cls(last, last, PositionShift(torch.zeros_like(last), 0))

    def advance(self, drafts: torch.Tensor, best: torch.Tensor, accepted: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, RoundInputs]:
        """Decide a greedy round and give the next round's inputs. drafts [B, K];
        best [B, K + 1], the target's argmax at each verify row; accepted [B, K],
        each draft's test (whether it is the argmax, or a benchmark's coin).
        Returns (drafts kept [B]: the accepted prefix; the token after them [B],
        the argmax at that row; the next round's inputs)."""
        kept, next_token, before_last, by = advance(accepted, drafts, best, self.last, self.shift.by)
        return kept, next_token, RoundInputs(next_token, before_last,
                                             PositionShift(by, self.shift.most + drafts.shape[1]))


@dataclass(frozen=True)
class ChainedVerdicts:
    """Every round's verdicts [R, B, K + 2] (`packed_verdict` rows), on their way to the host."""

    copy: HostCopy

    @classmethod
    def of(cls, rounds: list[torch.Tensor]) -> ChainedVerdicts:
        """`rounds`: verdicts [r, B, K + 2] of consecutive rounds, in order."""
        return cls(HostCopy([torch.cat(rounds)]))

    def per_request(self) -> list[tuple[list[int], list[int]]]:
        """For each request (waits for the copy): (tokens emitted over the rounds,
        drafts kept per round)."""
        rounds = self.copy.wait()[0].tolist()  # [R][B][K + 2]
        results = []
        for b in range(len(rounds[0])):
            emitted: list[int] = []
            kept_per_round = []
            for verdict in rounds:
                *drafts, kept, next_token = verdict[b]
                emitted.extend(drafts[:kept])
                emitted.append(next_token)
                kept_per_round.append(kept)
            results.append((emitted, kept_per_round))
        return results
