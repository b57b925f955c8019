"""Paged attention as Triton kernels: the CUDA path behind the same interface
as `torch_attention` (`write_kv`, `paged_attention`).

Kernels
-------
* `write_kv`: one launch, one program per new token; each program copies the
  token's K and V rows (all KV heads) to its slot. Slots < 0 are skipped
  (padding tokens). The copy is exact (no arithmetic on the values).
* `paged_attention`: one flash-attention style kernel for every kind of span
  (prefill chunk, chunk appended to cached context, single decode token, K+1
  verification tokens, empty span), plus a small reduction kernel when the
  context is split. Each program owns one KV head and a tile of
  `BLOCK_M = BLOCK_Q tokens x (query heads of that KV head group)` query rows,
  so a K/V tile read from the cache serves every query head that shares it
  (GQA). It walks the sequence's keys in tiles of `BLOCK_N` tokens, finds each
  key's physical block through the block table (any block size works: the
  block is looked up per key), applies the causal mask inside the span and the
  optional sliding window, and keeps an online softmax in fp32 (base-2
  exponentials, the softmax scale folded into the scores).
  - Decode (every span has q_len <= 1) maps one program to one sequence and
    one KV head, all query heads of the group at once (no search); on an H200
    it ran 0-11% faster than the general kernel on the same batches.
  - Otherwise the programs of each span are found on the device by a binary
    search over `query_start_loc` (the grid is an upper bound derived from
    the host metadata: num_tokens // BLOCK_Q + num_seqs; surplus programs
    exit at once).
  - Split-KV (flash-decoding): when there are too few programs to fill the GPU
    (small decode batches, long contexts) the key range of every program is
    cut into `num_splits` parts; each part writes fp32 partial results
    (unnormalised output, running max, running sum) and a second kernel
    merges them.

No host syncs: every launch parameter comes from the host tuples
(`seq_lens_host`, `query_start_loc_host`) and tensor shapes; the per-sequence
lengths and block tables are read on the device. For CUDA graphs, a graph
captured for a batch replays correctly for any other batch with the same
num_tokens, num_seqs, block-table width and the same launch choice (the same
`max q_len == 1` decision, BLOCK_Q and `num_splits`; pass `num_splits`
explicitly to `paged_attention_into` to pin it).

Supported: fp32/fp16/bf16 queries with a cache of the same dtype; head_dim up
to 256 (padded to a power of two >= 16 inside the kernel, so 16, 32, 64, 80,
96, 128, 256 all run); any block size; num_heads a multiple of num_kv_heads
with a group of at most 64 query heads per KV head. fp32 uses exact (non-TF32)
dot products. Anything else (no Triton, CPU tensors, other dtypes, mixed
query/cache dtypes, a cache whose last dim is not contiguous) falls back to
the PyTorch reference.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from helix.worker.attention import torch_attention as _reference
from helix.worker.attention.metadata import AttentionMetadata

try:  # Triton is optional: CPU and DirectML installs do not have it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

AVAILABLE = triton is not None

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_MAX_GROUP = 64


@dataclass(frozen=True)
class LaunchTuning:
    """Launch heuristics. Split-KV aims for `programs_per_sm` programs per
    multiprocessor, gives each split at least `min_split_keys` keys (one key
    tile), and never splits when the longest context is under `no_split_below`
    keys (the merge costs more than it saves there). Measured on an H200,
    TinyLlama shape, batch-1 decode: 64-key splits beat 256-key splits by 1.7x
    at 1k context and 1.3x at 4k. `block_n` is the key tile (None: 32 for
    fp32 and head_dim > 128; else 128 on the decode path, 64 on the general
    one). On an H200, 128-key tiles made batch-1 decode attention ~1 us faster
    a call at 128 keys and made whole batch-1 decoding 0.7-0.8% faster for
    both suite targets, but a 2k-token prefill 14% slower.
    `decode_path` False routes decode batches through the general kernel."""

    programs_per_sm: int = 2
    min_split_keys: int = 64
    no_split_below: int = 256
    max_splits: int = 64
    block_n: int | None = None
    decode_path: bool = True


DEFAULT_TUNING = LaunchTuning()
_LOG2E = 1.4426950408889634


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


if AVAILABLE:

    @triton.jit
    def _write_kv_kernel(
        key_ptr, value_ptr, cache_ptr, slot_ptr,
        stride_kt, stride_kh, stride_vt, stride_vh,
        stride_c_kv, stride_c_blk, stride_c_tok, stride_c_head,
        num_kv_heads, head_dim,
        BLOCK_SIZE: tl.constexpr, HEADS_P: tl.constexpr, DIM_P: tl.constexpr,
    ):
        token = tl.program_id(0).to(tl.int64)
        slot = tl.load(slot_ptr + token).to(tl.int64)
        if slot < 0:
            return
        blk = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        h = tl.arange(0, HEADS_P)[:, None]
        d = tl.arange(0, DIM_P)[None, :]
        mask = (h < num_kv_heads) & (d < head_dim)
        k = tl.load(key_ptr + token * stride_kt + h * stride_kh + d, mask=mask)
        v = tl.load(value_ptr + token * stride_vt + h * stride_vh + d, mask=mask)
        dst = cache_ptr + blk * stride_c_blk + off * stride_c_tok + h * stride_c_head + d
        tl.store(dst, k.to(cache_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + stride_c_kv, v.to(cache_ptr.dtype.element_ty), mask=mask)

    # Integers that change from step to step are not specialised on (Triton would
    # otherwise compile a variant for 1 and for multiples of 16), so the kernels
    # compiled at warm-up are all serving ever needs.
    @triton.jit(do_not_specialize=["num_seqs", "num_tokens", "window", "num_splits", "stride_bt"])
    def _paged_attention_kernel(
        q_ptr, out_ptr, k_cache_ptr, v_cache_ptr,
        block_tables_ptr, seq_lens_ptr, query_start_ptr,
        part_acc_ptr, part_ml_ptr,
        scale_log2, num_seqs, num_tokens, num_heads, head_dim, window, num_splits,
        stride_qt, stride_qh, stride_ot, stride_oh,
        stride_c_blk, stride_c_tok, stride_c_head, stride_bt,
        GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DIM_P: tl.constexpr,
        DECODE: tl.constexpr, SPLIT: tl.constexpr, HAS_WINDOW: tl.constexpr, IEEE: tl.constexpr,
    ):
        q_block = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)

        if DECODE:
            seq = q_block
            q_block_local = 0
        else:
            # Largest seq with query_start[seq] // BLOCK_Q + seq <= q_block: that
            # quantity grows by at least cdiv(q_len, BLOCK_Q) from one sequence
            # to the next, so each span owns a run of consecutive programs.
            lo = q_block * 0
            hi = lo + num_seqs - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                start_mid = tl.load(query_start_ptr + mid)
                ok = start_mid // BLOCK_Q + mid <= q_block
                lo = tl.where(ok, mid, lo)
                hi = tl.where(ok, hi, mid - 1)
            seq = lo
            q_block_local = q_block - (tl.load(query_start_ptr + seq) // BLOCK_Q + seq)

        q_start = tl.load(query_start_ptr + seq)
        q_len = tl.load(query_start_ptr + seq + 1) - q_start
        if q_block_local * BLOCK_Q >= q_len:
            return
        seq_len = tl.load(seq_lens_ptr + seq)
        first_pos = seq_len - q_len  # absolute position of the span's first query

        rows = tl.arange(0, BLOCK_M)
        row_tok = rows // GROUP_P
        row_head = rows % GROUP_P
        q_local = q_block_local * BLOCK_Q + row_tok
        row_valid = (row_tok < BLOCK_Q) & (q_local < q_len) & (row_head < GROUP)
        q_pos = first_pos + q_local
        head = kv_head * GROUP + row_head
        token = (q_start + q_local).to(tl.int64)

        d = tl.arange(0, DIM_P)
        d_mask = d < head_dim
        q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=row_valid[:, None] & d_mask[None, :], other=0.0)

        # Keys this tile of queries can see: causal upper bound, window lower bound.
        block_first = first_pos + q_block_local * BLOCK_Q
        kv_end = tl.minimum(block_first + BLOCK_Q, seq_len)
        kv_begin = 0
        if HAS_WINDOW:
            kv_begin = tl.maximum(block_first - window + 1, 0)
            kv_begin = (kv_begin // BLOCK_N) * BLOCK_N
        num_tiles = tl.cdiv(kv_end - kv_begin, BLOCK_N)
        tile_lo = 0
        tile_hi = num_tiles
        if SPLIT:
            per_split = tl.cdiv(num_tiles, num_splits)
            tile_lo = tl.minimum(split * per_split, num_tiles)
            tile_hi = tl.minimum(tile_lo + per_split, num_tiles)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, DIM_P], dtype=tl.float32)
        table = block_tables_ptr + seq.to(tl.int64) * stride_bt
        head_off = kv_head.to(tl.int64) * stride_c_head
        cols = tl.arange(0, BLOCK_N)

        for tile in range(tile_lo, tile_hi):
            k_pos = kv_begin + tile * BLOCK_N + cols
            k_valid = k_pos < kv_end
            blk = tl.load(table + k_pos // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
            kv_off = blk * stride_c_blk + (k_pos % BLOCK_SIZE) * stride_c_tok + head_off
            k = tl.load(k_cache_ptr + kv_off[None, :] + d[:, None],
                        mask=k_valid[None, :] & d_mask[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, k, input_precision="ieee")
            else:
                s = tl.dot(q, k)
            s = s * scale_log2
            visible = (k_pos[None, :] <= q_pos[:, None]) & k_valid[None, :]
            if HAS_WINDOW:
                visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # Rows with nothing visible yet keep m = -inf; shift them by 0 so
            # that exp2 gives 0 instead of NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_use)
            p = tl.math.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :],
                        mask=k_valid[:, None] & d_mask[None, :], other=0.0)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new

        out_mask = row_valid[:, None] & d_mask[None, :]
        if SPLIT:
            # Partials: acc [splits, tokens, heads, head_dim], (m, l) [splits, tokens, heads, 2].
            row = (split.to(tl.int64) * num_tokens + token) * num_heads + head
            tl.store(part_acc_ptr + row[:, None] * head_dim + d[None, :], acc, mask=out_mask)
            tl.store(part_ml_ptr + row * 2, m_i, mask=row_valid)
            tl.store(part_ml_ptr + row * 2 + 1, l_i, mask=row_valid)
        else:
            l_safe = tl.where(l_i == 0.0, 1.0, l_i)
            o = acc / l_safe[:, None]
            tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                     o.to(out_ptr.dtype.element_ty), mask=out_mask)

    @triton.jit(do_not_specialize=["num_tokens"])
    def _merge_splits_kernel(
        part_acc_ptr, part_ml_ptr, out_ptr,
        num_tokens, num_heads, head_dim, num_splits, stride_ot, stride_oh,
        SPLITS_P: tl.constexpr, DIM_P: tl.constexpr,
    ):
        token = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1)
        s = tl.arange(0, SPLITS_P)
        s_mask = s < num_splits
        d = tl.arange(0, DIM_P)
        d_mask = d < head_dim
        row = (s.to(tl.int64) * num_tokens + token) * num_heads + head
        m = tl.load(part_ml_ptr + row * 2, mask=s_mask, other=float("-inf"))
        l = tl.load(part_ml_ptr + row * 2 + 1, mask=s_mask, other=0.0)
        m_max = tl.max(m, 0)
        m_use = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.math.exp2(m - m_use)  # 0 for empty splits (m = -inf)
        denom = tl.sum(l * w, 0)
        acc = tl.load(part_acc_ptr + row[:, None] * head_dim + d[None, :],
                      mask=s_mask[:, None] & d_mask[None, :], other=0.0)
        o = tl.sum(acc * w[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
        tl.store(out_ptr + token * stride_ot + head * stride_oh + d, o.to(out_ptr.dtype.element_ty), mask=d_mask)


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    if _INTERPRET or not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _usable(query: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    if not AVAILABLE:
        return False
    if not (query.is_cuda or _INTERPRET) or query.device != kv_cache.device:
        return False
    if query.dtype not in _SUPPORTED_DTYPES or kv_cache.dtype != query.dtype:
        return False
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = kv_cache.shape[3]
    if head_dim > _MAX_HEAD_DIM or num_heads % num_kv_heads or num_heads // num_kv_heads > _MAX_GROUP:
        return False
    return kv_cache.stride(-1) == 1 and kv_cache.shape[-1] == head_dim


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store each new token's K/V at its slot. key/value: [num_tokens, num_kv_heads, head_dim].

    One launch for K and V together; slots < 0 are skipped. Falls back to the
    reference where the Triton kernel does not apply."""
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    if not (AVAILABLE and (key.is_cuda or _INTERPRET) and kv_cache.dtype in _SUPPORTED_DTYPES
            and kv_cache.stride(-1) == 1 and key.stride(-1) == 1 and value.stride(-1) == 1):
        _reference.write_kv(key, value, kv_cache, slot_mapping)
        return
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    _write_kv_kernel[(num_tokens,)](
        key, value, kv_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        num_kv_heads, head_dim,
        BLOCK_SIZE=block_size, HEADS_P=_next_pow2(num_kv_heads), DIM_P=_next_pow2(head_dim),
        num_warps=4 if num_kv_heads * head_dim >= 2048 else 1,
    )


def paged_attention(query: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """Causal attention of every query span over its sequence's cached context.

    Same contract as `torch_attention.paged_attention`: query [num_tokens,
    num_heads, head_dim], the span's own K/V already written (write_kv);
    returns a new [num_tokens, num_heads, head_dim] tensor.
    """
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    return paged_attention_into(query, kv_cache, meta, scale, sliding_window, out=out, num_splits=meta.num_splits)


def choose_launch(meta: AttentionMetadata, num_heads: int, num_kv_heads: int, head_dim: int,
                  dtype: torch.dtype, device: torch.device, num_splits: int | None = None,
                  tuning: LaunchTuning = DEFAULT_TUNING) -> dict[str, int | bool]:
    """The launch configuration, from host metadata only (no device reads)."""
    group = num_heads // num_kv_heads
    group_p = _next_pow2(group)
    dim_p = max(16, _next_pow2(head_dim))
    q_lens = [b - a for a, b in zip(meta.query_start_loc_host, meta.query_start_loc_host[1:])]
    max_q_len = max(q_lens, default=0)
    decode = max_q_len <= 1 and tuning.decode_path
    fp32 = dtype == torch.float32
    max_rows = 64 if (dim_p > 128 or fp32) else 128
    if decode:
        block_q = 1
    else:
        block_q = max(1, min(_next_pow2(max(1, max_q_len)), max_rows // group_p))
    block_m = max(16, block_q * group_p)
    block_n = tuning.block_n or (32 if (dim_p > 128 or fp32) else 128 if decode else 64)
    if decode:
        grid_q = meta.num_seqs
        active = sum(1 for n in q_lens if n > 0)
    else:
        grid_q = meta.num_tokens // block_q + meta.num_seqs
        active = sum(-(-n // block_q) for n in q_lens)
    if num_splits is None:
        max_ctx = max(meta.seq_lens_host, default=0)
        programs = max(1, active * num_kv_heads)
        index = device.index if device.index is not None else 0
        want = -(-tuning.programs_per_sm * _num_sms(index) // programs)
        cap = (max(1, max_ctx // max(tuning.min_split_keys, block_n)) if max_ctx >= tuning.no_split_below
               else 1)
        num_splits = min(want, cap, tuning.max_splits)
        # Round down to a power of two: fewer distinct merge kernels to compile.
        num_splits = 1 << (max(1, num_splits).bit_length() - 1)
    num_warps = 8 if block_m * dim_p >= 128 * 128 else 4
    return dict(group=group, group_p=group_p, dim_p=dim_p, block_q=block_q, block_m=block_m,
                block_n=block_n, decode=decode, grid_q=grid_q, num_splits=max(1, num_splits),
                num_warps=num_warps, num_stages=2 if (fp32 or dim_p > 128) else 3)


def paged_attention_into(query: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                         sliding_window: int | None = None, *, out: torch.Tensor,
                         num_splits: int | None = None, tuning: LaunchTuning = DEFAULT_TUNING) -> torch.Tensor:
    """`paged_attention` writing into `out` ([num_tokens, num_heads, head_dim],
    query's dtype). `num_splits` pins the split-KV factor (None: chosen from
    the host metadata). Returns `out`."""
    num_tokens, num_heads, head_dim = query.shape
    if num_tokens == 0:
        return out
    if not _usable(query, kv_cache) or out.stride(-1) != 1:
        out.copy_(_reference.paged_attention(query, kv_cache, meta, scale, sliding_window))
        return out
    if query.stride(-1) != 1:
        query = query.contiguous()
    num_kv_heads = kv_cache.shape[3]
    cfg = choose_launch(meta, num_heads, num_kv_heads, head_dim, query.dtype, query.device, num_splits, tuning)
    splits = cfg["num_splits"]
    split = splits > 1
    if split:
        part_acc = torch.empty((splits, num_tokens, num_heads, head_dim), dtype=torch.float32, device=query.device)
        part_ml = torch.empty((splits, num_tokens, num_heads, 2), dtype=torch.float32, device=query.device)
    else:
        part_acc = part_ml = out  # unused
    window = int(sliding_window) if sliding_window is not None else 0
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    grid = (cfg["grid_q"], num_kv_heads, splits)
    _paged_attention_kernel[grid](
        query, out, k_cache, v_cache,
        meta.block_tables, meta.seq_lens, meta.query_start_loc,
        part_acc, part_ml,
        float(scale) * _LOG2E, meta.num_seqs, num_tokens, num_heads, head_dim, window, splits,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        GROUP=cfg["group"], GROUP_P=cfg["group_p"], BLOCK_SIZE=meta.block_size,
        BLOCK_Q=cfg["block_q"], BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], DIM_P=cfg["dim_p"],
        DECODE=cfg["decode"], SPLIT=split, HAS_WINDOW=sliding_window is not None,
        IEEE=query.dtype == torch.float32,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if split:
        _merge_splits_kernel[(num_tokens, num_heads)](
            part_acc, part_ml, out,
            num_tokens, num_heads, head_dim, splits, out.stride(0), out.stride(1),
            SPLITS_P=_next_pow2(splits), DIM_P=_next_pow2(head_dim),
            num_warps=1 if head_dim * _next_pow2(splits) <= 2048 else 4,
        )
    return out
