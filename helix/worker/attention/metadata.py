"""What attention needs to know about one flattened batch.

A batch is a list of query spans, one per sequence, laid end to end in a single
token dimension. A span is `num_new` tokens appended to `num_computed` tokens
whose K/V already sit in the paged cache: a prefill chunk, one decode token and
K+1 verification tokens are all the same thing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from helix.worker.device import to_device


@dataclass(frozen=True)
class SequenceSpan:
    block_table: Sequence[int]  # physical block ids of this sequence, in logical order
    num_computed: int           # tokens whose K/V are already cached
    num_new: int                # tokens in this step's query


@dataclass(frozen=True)
class AttentionMetadata:
    positions: torch.Tensor        # [num_tokens] int64, absolute position of each query token
    slot_mapping: torch.Tensor     # [num_tokens] int64, block * block_size + offset for each new K/V
    block_tables: torch.Tensor     # [num_seqs, max_blocks] int32, padded with 0
    seq_lens: torch.Tensor         # [num_seqs] int32, context length after this step
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, offsets of each span in the token dim
    # Host copies, so the reference path never syncs with the device.
    seq_lens_host: tuple[int, ...]
    query_start_loc_host: tuple[int, ...]
    block_size: int
    # Split-KV factor pinned for a CUDA graph capture; None lets the kernel
    # launcher choose from the host metadata (the reference path ignores it).
    num_splits: int | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_host[-1]

    @property
    def last_token_indices(self) -> torch.Tensor:
        """[num_seqs] index of each span's last token (where logits are taken)."""
        return self.query_start_loc[1:].long() - 1


def build_attention_metadata(spans: Sequence[SequenceSpan], block_size: int,
                             device: torch.device) -> AttentionMetadata:
    positions: list[int] = []
    slots: list[int] = []
    seq_lens: list[int] = []
    query_start_loc = [0]
    for span in spans:
        seq_len = span.num_computed + span.num_new
        if len(span.block_table) * block_size < seq_len:
            raise ValueError(f"block table of {len(span.block_table)} blocks cannot hold {seq_len} tokens")
        for position in range(span.num_computed, seq_len):
            positions.append(position)
            slots.append(span.block_table[position // block_size] * block_size + position % block_size)
        seq_lens.append(seq_len)
        query_start_loc.append(query_start_loc[-1] + span.num_new)
    max_blocks = max((len(s.block_table) for s in spans), default=0)
    block_tables = [list(s.block_table) + [0] * (max_blocks - len(s.block_table)) for s in spans]
    return AttentionMetadata(
        positions=to_device(positions, torch.int64, device),
        slot_mapping=to_device(slots, torch.int64, device),
        block_tables=to_device(block_tables, torch.int32, device).reshape(len(spans), max_blocks),
        seq_lens=to_device(seq_lens, torch.int32, device),
        query_start_loc=to_device(query_start_loc, torch.int32, device),
        seq_lens_host=tuple(seq_lens),
        query_start_loc_host=tuple(query_start_loc),
        block_size=block_size,
    )
