"""Greedy token choice: each row's argmax over the vocabulary, read from the
model's own logits (bf16 on a GPU).

The model's float logits and `torch.argmax` over them cost a copy (~3 us)
and a reduction with one block per row (~10 us) for a few rows of a 32k
vocabulary on an H200 (CUDA trace). Greedy drafting and greedy verification
choose several times per speculative round, so on CUDA (with Triton) it is
one kernel here, one program per row, reading the logits in their own dtype.
Its result is torch.argmax's: the first index of the largest value (a float
copy changes no order, so reading bf16 directly picks the same token).
"""

from __future__ import annotations

import torch

from helix.worker.kernels.triton_ops import AVAILABLE

if AVAILABLE:  # Triton is optional: CPU and DirectML installs do not have it.
    import triton
    import triton.language as tl

# Vocabulary columns each program reads per iteration. The vocabulary size is a
# compile-time constant (one model, one size): the loop over it has a fixed count.
BLOCK = 2048

if AVAILABLE:

    @triton.jit
    def row_argmax(row_ptr, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
        """The first index of the largest of row_ptr[0:VOCAB] (int32). Each lane
        keeps its own largest value and that value's first column; the lanes
        holding the overall largest then give their smallest column."""
        cols = tl.arange(0, BLOCK)
        best = tl.full((BLOCK,), float("-inf"), tl.float32)
        best_col = tl.zeros((BLOCK,), tl.int32)
        for start in range(0, VOCAB, BLOCK):
            values = tl.load(row_ptr + start + cols, mask=start + cols < VOCAB, other=float("-inf")).to(tl.float32)
            larger = values > best
            best = tl.where(larger, values, best)
            best_col = tl.where(larger, start + cols, best_col)
        top = tl.max(best, axis=0)
        return tl.min(tl.where(best == top, best_col, VOCAB), axis=0)

    @triton.jit
    def _argmax_kernel(logits_ptr, row_stride, out_ptr, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        token = row_argmax(logits_ptr + row.to(tl.int64) * row_stride, VOCAB, BLOCK)
        tl.store(out_ptr + row, token.to(tl.int64))


def fused(tensor: torch.Tensor) -> bool:
    """Whether Triton kernels run for tensors where this one lives (on CUDA, with Triton)."""
    return AVAILABLE and tensor.is_cuda


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """[n] int64: the argmax of each row of logits [n, vocab] (rows may be
    strided, columns contiguous), as torch.argmax(dim=-1) gives it."""
    if not fused(logits) or logits.stride(1) != 1:
        return logits.argmax(dim=-1)
    num_rows, vocab = logits.shape
    tokens = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows:
        _argmax_kernel[(num_rows,)](logits, logits.stride(0), tokens, VOCAB=vocab, BLOCK=BLOCK, num_warps=8)
    return tokens


def warm_up(vocab: int, dtype: torch.dtype, device: torch.device) -> None:
    """Compile the kernel for this vocabulary and logits dtype now, rather than
    at the first greedy choice it serves."""
    if fused(torch.empty(0, device=device)):
        greedy_tokens(torch.zeros((1, vocab), dtype=dtype, device=device))
