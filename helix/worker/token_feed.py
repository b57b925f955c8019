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

from helix.worker.device import to_device


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
