"""The end of one greedy draft pass inside the draft loop's graph: each row's
draft is the argmax of its logits, and the loop's inputs move on to the next
position (the token just chosen, position and sequence length + 1, the slot
from the block table).

As PyTorch ops that is a float copy of the logits, an argmax and ~12 small
kernels per pass, several passes per speculative round. On CUDA (with
Triton) it is one kernel, one program per row; elsewhere the PyTorch ops
below run, and they are the reference the GPU tests check the kernel
against. Both give the same integers.
"""

from __future__ import annotations

import torch

from helix.worker.kernels import greedy
from helix.worker.kernels.triton_ops import AVAILABLE

if AVAILABLE:
    import triton
    import triton.language as tl

    # Sizes and strides are not specialised on: one compile serves every batch bucket and depth.
    @triton.jit(do_not_specialize=["drafts_stride", "depth", "table_stride", "width", "block_size"])
    def _step_kernel(logits_ptr, logits_stride, drafts_ptr, drafts_stride, depth, ids_ptr, positions_ptr,
                     seq_lens_ptr, slots_ptr, live_ptr, tables_ptr, table_stride, width, block_size,
                     VOCAB: tl.constexpr, BLOCK: tl.constexpr, ADVANCE: tl.constexpr):
        row = tl.program_id(0)
        token = greedy.row_argmax(logits_ptr + row.to(tl.int64) * logits_stride, VOCAB, BLOCK).to(tl.int64)
        tl.store(drafts_ptr + row * drafts_stride + depth, token)
        if ADVANCE:
            tl.store(ids_ptr + row, token)
            live = tl.load(live_ptr + row)
            position = tl.load(positions_ptr + row) + live
            tl.store(positions_ptr + row, position)
            seq_len = tl.load(seq_lens_ptr + row)
            tl.store(seq_lens_ptr + row, seq_len + live.to(seq_len.dtype))
            block = tl.minimum(position // block_size, width - 1)
            slot = tl.load(tables_ptr + row * table_stride + block).to(tl.int64) * block_size + position % block_size
            tl.store(slots_ptr + row, tl.where(live != 0, slot, -1))


def step(logits: torch.Tensor, drafts: torch.Tensor, depth: int, ids: torch.Tensor, positions: torch.Tensor,
         seq_lens: torch.Tensor, slots: torch.Tensor, live: torch.Tensor, block_tables: torch.Tensor,
         block_size: int, advance: bool) -> None:
    """In place, for n rows: drafts[:, depth] (drafts [n, D]) takes the argmax of
    logits [n, vocab]. With `advance`, ids [n] take it too, and rows with
    live [n] = 1 move one position on: positions [n] and seq_lens [n] + 1,
    slots [n] from block_tables [n, width] (the block index clamped to the
    width); rows with live = 0 (padding) keep their position and slot -1."""
    if greedy.fused(logits) and logits.stride(1) == 1:
        width = block_tables.shape[1]
        _step_kernel[(logits.shape[0],)](
            logits, logits.stride(0), drafts, drafts.stride(0), depth, ids, positions, seq_lens, slots, live,
            block_tables, block_tables.stride(0), width, block_size,
            VOCAB=logits.shape[1], BLOCK=greedy.BLOCK, ADVANCE=advance, num_warps=8)
        return
    chosen = logits.argmax(dim=-1)
    drafts[:, depth].copy_(chosen)
    if not advance:
        return
    ids.copy_(chosen)
    positions.add_(live)
    seq_lens.add_(live.to(seq_lens.dtype))
    block = (positions // block_size).clamp(max=block_tables.shape[1] - 1).unsqueeze(1)
    slot = block_tables.gather(1, block).squeeze(1).to(torch.int64) * block_size + positions % block_size
    slots.copy_(torch.where(live.bool(), slot, -1))
