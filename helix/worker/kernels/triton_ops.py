"""The decoder layer's elementwise ops as Triton kernels: the CUDA path behind
the same interface as `torch_ops` (`rms_norm`, `fused_add_rms_norm`,
`rotary_embedding`, `rotary_embedding_and_write_kv`, `silu_and_mul`).

Kernels (one launch per call)
-----------------------------
* `_rms_norm_kernel`: one program per row (token), the whole row in registers
  (the block is the hidden size rounded up to a power of two; sized for
  hidden <= 8192). With `ADD_RESIDUAL` it first forms and stores
  `x + residual` (the fused add + norm of every norm after the first).
* `_rotary_kernel`: one program per token rotates all query and key heads,
  reading the token's cos/sin rows once.
* `_rotary_cache_kernel` (what the model runs): the same for q, and the
  rotated k with v stored straight into the paged KV cache at the token's
  slot, so a layer launches no separate K/V write.
* `_silu_and_mul_kernel`: programs over (token, column tile) of the
  intermediate size.

Numerics: every value is widened to fp32, and each PyTorch op of the
reference is rounded to the model dtype where the reference rounds it
(`_round`); divisions are IEEE (`div_rn`) and the kernels are compiled without
floating-point contraction (`enable_fp_fusion=False`: a fused multiply-add
would skip the rounding of a product that the reference rounds). So sums,
products and casts give the reference's bits (the compiler may do a rounded
product or sum natively in bf16/fp16, which gives the same bits). What can
differ is only fp32 internals: the order of the sum of squares in the norm,
`rsqrt` and `exp` (hardware approximations on both sides, not the same ones).
In bf16/fp16 that shows as rare one- or two-ulp differences; in fp32 as a few
fp32 ulps.

CUDA graphs: outputs are new tensors from `torch.empty`, launch parameters
come from shapes only (no host reads of device data), and every kernel
specialises on the model's sizes, not on the token count, so a warm-up call
compiles what a capture replays.

Supported: fp16, bf16 and fp32 tensors on one CUDA device. The row inputs of
the norms and `silu_and_mul` are made contiguous (they already are in the
model); q and k may be strided views (the split of the fused QKV output).
"""

from __future__ import annotations

import torch

from helix.worker.kernels import torch_ops
from helix.worker.kernels.torch_ops import WriteKV

try:  # Triton is optional: CPU and DirectML installs do not have it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

AVAILABLE = triton is not None
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SILU_BLOCK = 1024
_ROTARY_WARPS = 4
_NO_CONTRACTION = {"enable_fp_fusion": False}

if AVAILABLE:

    @triton.jit
    def _round(x, dtype: tl.constexpr):
        """fp32 x rounded to `dtype` (nearest even) and widened back: one reference op's rounding."""
        return x.to(dtype).to(tl.float32)

    @triton.jit
    def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, hidden, eps,
                         ADD_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64) * hidden
        cols = tl.arange(0, BLOCK)
        mask = cols < hidden
        dtype = out_ptr.dtype.element_ty
        x = tl.load(x_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
        if ADD_RESIDUAL:
            residual = tl.load(residual_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
            x = _round(x + residual, dtype)
            tl.store(residual_out_ptr + row + cols, x.to(dtype), mask=mask)
        inv_rms = tl.math.rsqrt(tl.math.div_rn(tl.sum(x * x, axis=0), hidden.to(tl.float32)) + eps)
        normed = _round(x * inv_rms, dtype)
        weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row + cols, (weight * normed).to(dtype), mask=mask)

    @triton.jit
    def _row_inverse_rms(x_ptr, hidden, eps, BLOCK_HIDDEN: tl.constexpr):
        """fp32 1/rms of the row x[:hidden] (`torch_ops.inverse_rms`)."""
        cols = tl.arange(0, BLOCK_HIDDEN)
        x = tl.load(x_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        return tl.math.rsqrt(tl.math.div_rn(tl.sum(x * x, axis=0), hidden.to(tl.float32)) + eps)

    @triton.jit
    def _rotate_heads(src_ptr, stride_h, stride_d, dst_ptr, dst_stride_h, num_heads, cos1, cos2, sin1, sin2,
                      write, scale, SCALED: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
                      BLOCK_H: tl.constexpr):
        """Rotate one token's heads: src [num_heads, 2*HALF] (strided) -> dst
        (heads dst_stride_h apart, dims contiguous); nothing is stored unless `write`.
        With SCALED, src is first multiplied by `scale` and rounded (folded norms).

        out[:HALF] = x1*cos1 + (-x2)*sin1, out[HALF:] = x2*cos2 + x1*sin2, each
        product and the sum rounded as the reference rounds them."""
        heads = tl.arange(0, BLOCK_H)[:, None]
        dims = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (heads < num_heads) & (dims < HALF)
        src = src_ptr + heads * stride_h + dims * stride_d
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF * stride_d, mask=mask, other=0.0).to(tl.float32)
        dtype = dst_ptr.dtype.element_ty
        if SCALED:
            x1 = _round(x1 * scale, dtype)
            x2 = _round(x2 * scale, dtype)
        out1 = _round(x1 * cos1, dtype) - _round(x2 * sin1, dtype)
        out2 = _round(x2 * cos2, dtype) + _round(x1 * sin2, dtype)
        dst = dst_ptr + heads * dst_stride_h + dims
        tl.store(dst, out1.to(dtype), mask=mask & write)
        tl.store(dst + HALF, out2.to(dtype), mask=mask & write)

    @triton.jit
    def _trig_rows(positions_ptr, token, cos_ptr, sin_ptr, trig_stride, HALF: tl.constexpr,
                   BLOCK_HALF: tl.constexpr):
        """The token's cos and sin halves, fp32 [1, BLOCK_HALF] each."""
        position = tl.load(positions_ptr + token).to(tl.int64)
        dims = tl.arange(0, BLOCK_HALF)
        dim_mask = dims < HALF
        cos_row = cos_ptr + position * trig_stride + dims
        sin_row = sin_ptr + position * trig_stride + dims
        cos1 = tl.load(cos_row, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
        cos2 = tl.load(cos_row + HALF, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
        sin1 = tl.load(sin_row, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
        sin2 = tl.load(sin_row + HALF, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
        return cos1, cos2, sin1, sin2

    @triton.jit
    def _rotary_kernel(positions_ptr, cos_ptr, sin_ptr, trig_stride,
                       q_ptr, q_stride_t, q_stride_h, q_stride_d, q_out_ptr, num_q_heads,
                       k_ptr, k_stride_t, k_stride_h, k_stride_d, k_out_ptr, num_k_heads,
                       HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_QH: tl.constexpr,
                       BLOCK_KH: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)
        cos1, cos2, sin1, sin2 = _trig_rows(positions_ptr, token, cos_ptr, sin_ptr, trig_stride, HALF, BLOCK_HALF)
        _rotate_heads(q_ptr + token * q_stride_t, q_stride_h, q_stride_d, q_out_ptr + token * num_q_heads * 2 * HALF,
                      2 * HALF, num_q_heads, cos1, cos2, sin1, sin2, True, 1.0, False, HALF, BLOCK_HALF, BLOCK_QH)
        _rotate_heads(k_ptr + token * k_stride_t, k_stride_h, k_stride_d, k_out_ptr + token * num_k_heads * 2 * HALF,
                      2 * HALF, num_k_heads, cos1, cos2, sin1, sin2, True, 1.0, False, HALF, BLOCK_HALF, BLOCK_KH)

    @triton.jit
    def _rotary_cache_kernel(positions_ptr, cos_ptr, sin_ptr, trig_stride,
                             q_ptr, q_stride_t, q_stride_h, q_stride_d, q_out_ptr, num_q_heads,
                             k_ptr, k_stride_t, k_stride_h, k_stride_d, v_ptr, v_stride_t, v_stride_h,
                             num_k_heads, cache_ptr, slot_ptr, stride_c_kv, stride_c_blk, stride_c_tok,
                             stride_c_head, norm_ptr, hidden, eps, SCALED: tl.constexpr,
                             BLOCK_HIDDEN: tl.constexpr, BLOCK_SIZE: tl.constexpr, HALF: tl.constexpr,
                             BLOCK_HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr):
        """`_rotary_kernel` for q, then the rotated k and v of the token straight
        into the paged cache at its slot (none for slot < 0). With SCALED, q, k
        and v are first scaled by 1/rms of the token's row of norm [T, hidden]."""
        token = tl.program_id(0).to(tl.int64)
        scale = 1.0
        if SCALED:
            scale = _row_inverse_rms(norm_ptr + token * hidden, hidden, eps, BLOCK_HIDDEN)
        cos1, cos2, sin1, sin2 = _trig_rows(positions_ptr, token, cos_ptr, sin_ptr, trig_stride, HALF, BLOCK_HALF)
        _rotate_heads(q_ptr + token * q_stride_t, q_stride_h, q_stride_d, q_out_ptr + token * num_q_heads * 2 * HALF,
                      2 * HALF, num_q_heads, cos1, cos2, sin1, sin2, True, scale, SCALED, HALF, BLOCK_HALF, BLOCK_QH)
        slot = tl.load(slot_ptr + token).to(tl.int64)
        write = slot >= 0
        at = tl.maximum(slot, 0)
        key_dst = cache_ptr + (at // BLOCK_SIZE) * stride_c_blk + (at % BLOCK_SIZE) * stride_c_tok
        _rotate_heads(k_ptr + token * k_stride_t, k_stride_h, k_stride_d, key_dst, stride_c_head, num_k_heads,
                      cos1, cos2, sin1, sin2, write, scale, SCALED, HALF, BLOCK_HALF, BLOCK_KH)
        heads = tl.arange(0, BLOCK_KH)[:, None]
        dims = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (heads < num_k_heads) & (dims < HALF) & write
        value = v_ptr + token * v_stride_t + heads * v_stride_h + dims
        value_dst = key_dst + stride_c_kv + heads * stride_c_head + dims
        dtype = cache_ptr.dtype.element_ty
        v1 = tl.load(value, mask=mask, other=0.0).to(tl.float32)
        v2 = tl.load(value + HALF, mask=mask, other=0.0).to(tl.float32)
        if SCALED:
            v1 = v1 * scale
            v2 = v2 * scale
        tl.store(value_dst, v1.to(dtype), mask=mask)
        tl.store(value_dst + HALF, v2.to(dtype), mask=mask)

    @triton.jit
    def _silu_and_mul_kernel(gate_up_ptr, out_ptr, inter, norm_ptr, hidden, eps, SCALED: tl.constexpr,
                             BLOCK_HIDDEN: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        gate_ptr = gate_up_ptr + row * 2 * inter + cols
        gate = tl.load(gate_ptr, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(gate_ptr + inter, mask=mask, other=0.0).to(tl.float32)
        dtype = out_ptr.dtype.element_ty
        if SCALED:  # folded norm: gate_up times 1/rms of the row of norm [T, hidden], rounded
            scale = _row_inverse_rms(norm_ptr + row * hidden, hidden, eps, BLOCK_HIDDEN)
            gate = _round(gate * scale, dtype)
            up = _round(up * scale, dtype)
        silu = _round(tl.math.div_rn(gate, 1.0 + tl.exp(-gate)), dtype)
        tl.store(out_ptr + row * inter + cols, (silu * up).to(dtype), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) per row. x: [T, H]; weight: [H] in x's dtype; returns a new [T, H]."""
    x = x.contiguous()
    out = torch.empty_like(x)
    _launch_norm(x, x, weight, eps, out, out, add_residual=False)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass. x, residual: [T, H]; returns new tensors."""
    x, residual = x.contiguous(), residual.contiguous()
    out, residual_out = torch.empty_like(x), torch.empty_like(x)
    _launch_norm(x, residual, weight, eps, out, residual_out, add_residual=True)
    return out, residual_out


def _launch_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor,
                 residual_out: torch.Tensor, add_residual: bool) -> None:
    """One program per row; `residual`/`residual_out` are read/written only with add_residual."""
    num_rows, hidden = x.shape
    if num_rows == 0:
        return
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(num_rows,)](x, residual, weight, out, residual_out, hidden, eps,
                                  ADD_RESIDUAL=add_residual, BLOCK=block, num_warps=min(16, max(1, block // 512)),
                                  **_NO_CONTRACTION)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (rotate-half) of q [T, Hq, D] and k [T, Hkv, D] at positions [T] (int64).

    cos, sin: contiguous [max_positions, D] in q's dtype. q and k may be
    strided; returns new contiguous rotated (q, k)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    q_out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    k_out = torch.empty((num_tokens, num_k_heads, head_dim), dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions, cos, sin, cos.stride(0),
        q, q.stride(0), q.stride(1), q.stride(2), q_out, num_q_heads,
        k, k.stride(0), k.stride(1), k.stride(2), k_out, num_k_heads,
        HALF=half, BLOCK_HALF=triton.next_power_of_2(half), BLOCK_QH=triton.next_power_of_2(num_q_heads),
        BLOCK_KH=triton.next_power_of_2(num_k_heads), num_warps=_ROTARY_WARPS, **_NO_CONTRACTION,
    )
    return q_out, k_out


def rotary_embedding_and_write_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  cos: torch.Tensor, sin: torch.Tensor, kv_cache: torch.Tensor,
                                  slot_mapping: torch.Tensor, write_kv: WriteKV,
                                  norm_of: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """`torch_ops.rotary_embedding_and_write_kv` in one launch: returns the new
    rotated q and stores the rotated k and v [T, Hkv, D] at their slots of
    kv_cache [2, blocks, block_size, Hkv, D] (none for slot < 0); with
    `norm_of` [T, H] (contiguous), q, k and v are first scaled by its inverse
    rms. Where the cache's dtype or layout does not allow it, the scaling,
    the rotation and `write_kv` run one after the other."""
    num_tokens, num_q_heads, head_dim = q.shape
    if kv_cache.dtype != q.dtype or kv_cache.stride(-1) != 1 or v.stride(-1) != 1:
        if norm_of is not None:
            scale = torch_ops.inverse_rms(norm_of, eps)
            q, k, v = (torch_ops.scale_rows(t, scale) for t in (q, k, v))
        q_out, k_out = rotary_embedding(positions, q, k, cos, sin)
        write_kv(k_out, v, kv_cache, slot_mapping)
        return q_out
    q_out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return q_out
    half, num_k_heads = head_dim // 2, k.shape[1]
    _rotary_cache_kernel[(num_tokens,)](
        positions, cos, sin, cos.stride(0),
        q, q.stride(0), q.stride(1), q.stride(2), q_out, num_q_heads,
        k, k.stride(0), k.stride(1), k.stride(2), v, v.stride(0), v.stride(1), num_k_heads,
        kv_cache, slot_mapping, kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        *_norm_args(norm_of, q, eps),
        BLOCK_SIZE=kv_cache.shape[2], HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
        BLOCK_QH=triton.next_power_of_2(num_q_heads), BLOCK_KH=triton.next_power_of_2(num_k_heads),
        num_warps=_ROTARY_WARPS, **_NO_CONTRACTION,
    )
    return q_out


def silu_and_mul(gate_up: torch.Tensor, norm_of: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up]: [T, 2I] -> a new [T, I], in gate_up's dtype;
    with `norm_of` [T, H] (contiguous), gate_up is first scaled by its inverse rms."""
    gate_up = gate_up.contiguous()
    num_tokens, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((num_tokens, inter), dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens == 0:
        return out
    block = min(_SILU_BLOCK, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(inter, block))](gate_up, out, inter,
                                                                   *_norm_args(norm_of, gate_up, eps), BLOCK=block,
                                                                   num_warps=4 if block >= 512 else 1,
                                                                   **_NO_CONTRACTION)
    return out


def _norm_args(norm_of: torch.Tensor | None, placeholder: torch.Tensor, eps: float) -> tuple:
    """(norm_ptr, hidden, eps, SCALED, BLOCK_HIDDEN) for a kernel that may scale by 1/rms of norm_of's rows."""
    if norm_of is None:
        return placeholder, 1, 0.0, False, 1
    assert norm_of.is_contiguous(), "norm_of: rows must be contiguous"
    return norm_of, norm_of.shape[1], float(eps), True, triton.next_power_of_2(norm_of.shape[1])
