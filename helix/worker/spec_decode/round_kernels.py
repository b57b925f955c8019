"""The per-round bookkeeping of chained speculative rounds, one launch each on CUDA.

A chained round shifts three forwards' staged inputs (`shift_inputs`) and
decides its verdict and the next round's inputs (`advance`). As PyTorch ops
they are ~10 and ~13 small kernels, launched between the round's passes:
each costs a few microseconds of the device and more of the host. A round
captured whole (`round_graphs`) derives each pass's inputs from the round's
start (`span_inputs`) and writes its verdict and next inputs in place
(`finish_round`), ~12 and ~8 kernels as PyTorch ops. On CUDA
(with Triton) each is one kernel, one program per sequence; elsewhere the
PyTorch ops below run, and they are the reference the GPU tests check the
kernels against. All values are integers, so both give the same results.
"""

from __future__ import annotations

import torch

from helix.worker.kernels.greedy import fused
from helix.worker.kernels.triton_ops import AVAILABLE

if AVAILABLE:  # Triton is optional: CPU and DirectML installs do not have it.
    import triton
    import triton.language as tl

    # Sizes and strides are not specialised on, so `warm_up` compiles every variant.
    @triton.jit(do_not_specialize=["pos_stride", "slot_stride", "table_stride", "query_len", "block_size"])
    def _shift_kernel(positions_ptr, pos_stride, slots_ptr, slot_stride, seq_lens_ptr, tables_ptr, table_stride,
                      by_ptr, query_len, block_size, BLOCK_Q: tl.constexpr):
        seq = tl.program_id(0)
        by = tl.load(by_ptr + seq)
        cols = tl.arange(0, BLOCK_Q)
        mask = cols < query_len
        positions = tl.load(positions_ptr + seq * pos_stride + cols, mask=mask, other=0) + by
        blocks = tl.load(tables_ptr + seq * table_stride + positions // block_size, mask=mask, other=0)
        tl.store(positions_ptr + seq * pos_stride + cols, positions, mask=mask)
        tl.store(slots_ptr + seq * slot_stride + cols, blocks.to(tl.int64) * block_size + positions % block_size,
                 mask=mask)
        seq_len = tl.load(seq_lens_ptr + seq)
        tl.store(seq_lens_ptr + seq, seq_len + by.to(seq_len.dtype))

    @triton.jit
    def _verdict(accepted_ptr, drafts_ptr, best_ptr, last, k, BLOCK_K: tl.constexpr):
        """One row's (drafts kept, the token after them, the token before that)."""
        cols = tl.arange(0, BLOCK_K)
        accepted = tl.load(accepted_ptr + cols, mask=cols < k, other=0)
        # Drafts kept: the index of the first rejected draft, or K.
        kept = tl.min(tl.where(accepted != 0, k, cols), axis=0)
        next_token = tl.load(best_ptr + kept)
        last_kept = tl.load(drafts_ptr + tl.maximum(kept - 1, 0))
        return kept, next_token, tl.where(kept > 0, last_kept, last)

    @triton.jit(do_not_specialize=["k"])
    def _advance_kernel(accepted_ptr, drafts_ptr, best_ptr, last_ptr, by_ptr, kept_ptr, next_ptr, before_last_ptr,
                        by_out_ptr, k, BLOCK_K: tl.constexpr):
        row = tl.program_id(0)
        kept, next_token, before_last = _verdict(accepted_ptr + row * k, drafts_ptr + row * k,
                                                 best_ptr + row * (k + 1), tl.load(last_ptr + row), k, BLOCK_K)
        tl.store(kept_ptr + row, kept.to(tl.int64))
        tl.store(next_ptr + row, next_token)
        tl.store(before_last_ptr + row, before_last)
        tl.store(by_out_ptr + row, tl.load(by_ptr + row) + kept)

    @triton.jit(do_not_specialize=["table_stride", "width", "offset", "count", "block_size"])
    def _span_kernel(start_ptr, live_ptr, tables_ptr, table_stride, width, positions_ptr, slots_ptr, seq_lens_ptr,
                     offset, count, block_size, BLOCK_Q: tl.constexpr):
        row = tl.program_id(0)
        start = tl.load(start_ptr + row) + offset
        live = tl.load(live_ptr + row)
        cols = tl.arange(0, BLOCK_Q)
        mask = cols < count
        positions = start + cols
        block = tl.minimum(positions // block_size, width - 1)
        blocks = tl.load(tables_ptr + row * table_stride + block, mask=mask, other=0)
        slots = tl.where(live != 0, blocks.to(tl.int64) * block_size + positions % block_size, -1)
        tl.store(positions_ptr + row * count + cols, positions, mask=mask)
        tl.store(slots_ptr + row * count + cols, slots, mask=mask)
        tl.store(seq_lens_ptr + row, ((start + count) * live).to(tl.int32))

    @triton.jit(do_not_specialize=["tests_stride", "k", "verdict_stride"])
    def _finish_kernel(tests_ptr, tests_stride, drafts_ptr, best_ptr, last_ptr, before_last_ptr, start_ptr, live_ptr,
                       index_ptr, verdicts_ptr, verdict_stride, k, BLOCK_K: tl.constexpr):
        row = tl.program_id(0)
        last = tl.load(last_ptr + row)
        kept, next_token, before_last = _verdict(tests_ptr + row * tests_stride, drafts_ptr + row * k,
                                                 best_ptr + row * (k + 1), last, k, BLOCK_K)
        cols = tl.arange(0, BLOCK_K)
        verdict = verdicts_ptr + tl.load(index_ptr) * verdict_stride + row * (k + 2)
        tl.store(verdict + cols, tl.load(drafts_ptr + row * k + cols, mask=cols < k), mask=cols < k)
        tl.store(verdict + k, kept.to(tl.int64))
        tl.store(verdict + k + 1, next_token)
        tl.store(last_ptr + row, next_token)
        tl.store(before_last_ptr + row, before_last)
        start = tl.load(start_ptr + row)
        tl.store(start_ptr + row, start + (kept + 1) * tl.load(live_ptr + row))


def shift_inputs(positions: torch.Tensor, seq_lens: torch.Tensor, slots: torch.Tensor, block_tables: torch.Tensor,
                 by: torch.Tensor, block_size: int) -> None:
    """In place: positions and slots [n, q] (every token real; rows may be strided,
    columns contiguous) move `by` [n] later, slots recomputed from the block
    tables [n, width] (which cover the new positions), and seq_lens [n] grow by it."""
    if fused(positions):
        num_seqs, query_len = positions.shape
        _shift_kernel[(num_seqs,)](positions, positions.stride(0), slots, slots.stride(0), seq_lens, block_tables,
                                   block_tables.stride(0), by, query_len, block_size,
                                   BLOCK_Q=triton.next_power_of_2(query_len))
        return
    positions += by.unsqueeze(1)
    seq_lens += by.to(seq_lens.dtype)
    blocks = block_tables.gather(1, positions // block_size).to(torch.int64)
    slots.copy_(blocks * block_size + positions % block_size)


def packed_verdict(drafts: torch.Tensor, kept: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
    """One round's verdict as one row per request [B, K + 2]: the drafts [B, K],
    how many were kept [B], the token after them [B]."""
    return torch.cat((drafts, kept.unsqueeze(1), next_token.unsqueeze(1)), dim=1)


def advance(accepted: torch.Tensor, drafts: torch.Tensor, best: torch.Tensor, last: torch.Tensor,
            by: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A greedy round's verdict and the next round's inputs, per request.

    accepted [B, K] bool: each draft's test; drafts [B, K]; best [B, K + 1]: the
    target's argmax at each verify row; last [B]: the token at the round's
    start; by [B]: drafts kept by the rounds before. Returns (kept [B]: the
    accepted prefix's length; next [B]: the argmax at row `kept`, the next
    round's first token; before_last [B]: the token before it, the last kept
    draft or `last`; by + kept)."""
    if fused(drafts):
        batch, k = drafts.shape
        kept, next_token, before_last, by_out = (torch.empty(batch, dtype=torch.int64, device=drafts.device)
                                                 for _ in range(4))
        _advance_kernel[(batch,)](accepted.contiguous(), drafts.contiguous(), best.contiguous(), last, by, kept,
                                  next_token, before_last, by_out, k, BLOCK_K=triton.next_power_of_2(k))
        return kept, next_token, before_last, by_out
    kept = accepted.to(torch.int64).cumprod(dim=1).sum(dim=1)
    next_token = best.gather(1, kept.unsqueeze(1)).squeeze(1)
    last_kept = drafts.gather(1, (kept - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    return kept, next_token, torch.where(kept > 0, last_kept, last), by + kept


def span_inputs(start: torch.Tensor, live: torch.Tensor, block_tables: torch.Tensor, offset: int, count: int,
                block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention inputs of `count` tokens per row from position start + offset:
    (positions [n, count], slots [n, count], seq_lens [n] int32). start [n],
    live [n] (1 for real rows; 0 for padding: slots -1, sequence length 0),
    block_tables [n, width] (block indices clamped to the width)."""
    if fused(start):
        num_seqs = start.shape[0]
        positions = torch.empty((num_seqs, count), dtype=torch.int64, device=start.device)
        slots, seq_lens = torch.empty_like(positions), torch.empty(num_seqs, dtype=torch.int32, device=start.device)
        _span_kernel[(num_seqs,)](start, live, block_tables, block_tables.stride(0), block_tables.shape[1],
                                  positions, slots, seq_lens, offset, count, block_size,
                                  BLOCK_Q=triton.next_power_of_2(count))
        return positions, slots, seq_lens
    positions = start.unsqueeze(1) + torch.arange(offset, offset + count, device=start.device)
    blocks = block_tables.gather(1, (positions // block_size).clamp(max=block_tables.shape[1] - 1))
    slots = torch.where(live.unsqueeze(1) != 0, blocks * block_size + positions % block_size, -1)
    return positions, slots, ((start + offset + count) * live).to(torch.int32)


def finish_round(tests: torch.Tensor, drafts: torch.Tensor, best: torch.Tensor, last: torch.Tensor,
                 before_last: torch.Tensor, start: torch.Tensor, live: torch.Tensor, index: torch.Tensor,
                 verdicts: torch.Tensor) -> None:
    """A graphed round's verdict, in place: row `index` ([1] on the device) of
    verdicts [R, >= n * (K + 2)] takes each row's `packed_verdict` (drafts [n, K],
    drafts kept by tests [n, K] (bool, rows may be strided), the argmax after
    them from best [n, K + 1]); then last [n] becomes that token, before_last
    [n] the token before it, and start [n] moves past both where live [n] = 1."""
    if fused(drafts) and tests.stride(1) == 1 and verdicts.stride(1) == 1:
        num_seqs, k = drafts.shape
        _finish_kernel[(num_seqs,)](tests, tests.stride(0), drafts.contiguous(), best.contiguous(), last, before_last,
                                    start, live, index, verdicts, verdicts.stride(0), k,
                                    BLOCK_K=triton.next_power_of_2(k))
        return
    kept, next_token, new_before_last, _ = advance(tests, drafts, best, last, torch.zeros_like(last))
    verdict = packed_verdict(drafts, kept, next_token).view(1, -1)
    verdicts[:, :verdict.shape[1]].index_copy_(0, index, verdict)
    last.copy_(next_token)
    before_last.copy_(new_before_last)
    start.add_((kept + 1) * live)


def warm_up(device: torch.device, max_query_len: int) -> None:
    """Compile both kernels for every span length up to max_query_len (1 + K_max)
    now, rather than in the first chained rounds."""
    if not fused(torch.empty(0, device=device)):
        return
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    table = torch.zeros((1, 1), dtype=torch.int32, device=device)
    for query_len in range(1, max_query_len + 1):
        positions = torch.zeros((1, query_len), dtype=torch.int64, device=device)
        shift_inputs(positions, torch.zeros(1, dtype=torch.int32, device=device), positions.clone(), table, zero, 16)
        if query_len > 1:  # K = query_len - 1 drafts
            accepted = torch.ones((1, query_len - 1), dtype=torch.bool, device=device)
            advance(accepted, positions[:, 1:].contiguous(), positions, zero, zero)
