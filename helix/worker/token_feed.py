"""Input tokens that only the device has yet.

A step scheduled ahead of the previous step's results runs, for a request the
previous step sampled, the token that step sampled; a draft pass runs the
draft token the pass before it chose; verification runs every draft. Each is
known on the device (chosen ids) but not on the host. The runner stages a
placeholder and then copies the ids across on the device, queued after the
kernels that chose them, so no host round trip stands between the passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from helix.worker.attention.metadata import SequenceSpan
from helix.worker.device import to_device
from helix.worker.spec_decode.round_kernels import shift_inputs


@dataclass(frozen=True)
class TokenFeed:
    """Token `offset` of span `spans[i]` is `source[rows[i]]`."""

    spans: tuple[int, ...]
    source: torch.Tensor  # [n] int64 chosen token ids, on the device
    rows: tuple[int, ...]
    offset: int = 0

    def apply(self, input_ids: torch.Tensor, first_rows: Sequence[int]) -> None:
        """Write the fed ids into `input_ids`, where span s starts at row first_rows[s]."""
        count = len(self.rows)
        tokens = (self.source[:count] if self.rows == tuple(range(count))
                  else self.source[to_device(self.rows, torch.int64, self.source.device)])
        destination = [first_rows[span] + self.offset for span in self.spans]
        stride = destination[1] - destination[0] if count > 1 else 1
        if stride > 0 and destination == list(range(destination[0], destination[0] + stride * count, stride)):
            input_ids[destination[0]:destination[-1] + 1:stride].copy_(tokens)  # one strided copy, no index
        else:
            input_ids[to_device(destination, torch.int64, input_ids.device)] = tokens


@dataclass(frozen=True)
class PositionShift:
    """Spans that start `by[i]` positions later than staged: in chained
    speculative rounds, the drafts the rounds before kept, known only on the
    device. The host stages each span at its lowest start and the device adds
    the rest; `most` bounds every entry (sizing tables and split choices)."""

    by: torch.Tensor  # [num_seqs] int64, on the device
    most: int

    def apply(self, positions: torch.Tensor, seq_lens: torch.Tensor, slots: torch.Tensor,
              block_tables: torch.Tensor, block_size: int) -> None:
        """Shift staged inputs in place: positions and slots [num_seqs, q] (every
        token real), seq_lens [num_seqs], and recompute the slots from the block
        tables [num_seqs, width] (which must cover the shifted positions)."""
        shift_inputs(positions, seq_lens, slots, block_tables, self.by, block_size)

    def shifted(self, spans: Sequence[SequenceSpan]) -> list[SequenceSpan]:
        """The spans where they really start (waits for the device)."""
        return [SequenceSpan(span.block_table, span.num_computed + by, span.num_new)
                for span, by in zip(spans, self.by.tolist())]
