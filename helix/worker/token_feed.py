"""Input tokens that only the device has yet.

A step scheduled ahead of the previous step's results runs, for a request the
previous step sampled, the token that step sampled: it is known on the device
(the previous step's chosen ids) but not on the host. The runner stages a
placeholder for it and then copies the id across on the device, queued after
the previous step's sampling, so no host round trip stands between the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from helix.worker.device import to_device


@dataclass(frozen=True)
class TokenFeed:
    """Span `spans[i]`'s first token is `source[rows[i]]`."""

    spans: tuple[int, ...]
    source: torch.Tensor  # [n] int64 token ids chosen by the previous step, on the device
    rows: tuple[int, ...]

    def apply(self, input_ids: torch.Tensor, first_rows: Sequence[int]) -> None:
        """Write the fed ids into `input_ids`, where span s starts at row first_rows[s]."""
        count = len(self.rows)
        tokens = (self.source[:count] if self.rows == tuple(range(count))
                  else self.source[to_device(self.rows, torch.int64, self.source.device)])
        destination = [first_rows[span] for span in self.spans]
        stride = destination[1] - destination[0] if count > 1 else 1
        if stride > 0 and destination == list(range(destination[0], destination[0] + stride * count, stride)):
            input_ids[destination[0]:destination[-1] + 1:stride].copy_(tokens)  # one strided copy, no index
        else:
            input_ids[to_device(destination, torch.int64, input_ids.device)] = tokens
