"""The decoder layer's elementwise ops in plain PyTorch: the CPU/DirectML path
and the oracle for `triton_ops`.

Every function is pure (returns new tensors, never writes its inputs), but
for `rotary_embedding_and_write_kv`, which stores into the KV cache it is
given. Each computes in the inputs' dtype exactly as the model always has:
norms in fp32, cast back, then scaled in the model dtype (as transformers
does).

Folded norms: where a layer's RMSNorm weight is folded into the projection
that follows it, the projection reads the raw residual stream, and the op
after it (RoPE for q/k/v, SiLU-and-mul for gate/up) takes `norm_of`, that
stream [T, H], and first scales its inputs by 1/rms of their token's row
(fp32, rounded back to their dtype): RMSNorm is a per-token scale once its
weight is gone.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# An attention backend's `write_kv(key, value, kv_cache, slot_mapping)`.
WriteKV = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) over the last dim. x: [..., H]; weight: [H]; returns x's shape.

    The normalisation runs in fp32 and is cast to x's dtype before the
    multiplication by the weight."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual). x, residual: [T, H]; the sum is in their dtype."""
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (rotate-half convention) of q [T, Hq, D] and k [T, Hkv, D] at positions [T].

    cos, sin: [max_positions, D] in q's dtype. Returns new rotated (q, k)."""
    cos = cos[positions].unsqueeze(1)
    sin = sin[positions].unsqueeze(1)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def inverse_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """[T, 1] fp32: 1 / rms of each row of x [T, H], as `rms_norm` computes it."""
    return torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)


def scale_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [T, ...] times scale [T, 1] per token, in fp32, rounded to x's dtype."""
    return (x.float() * scale.view(-1, *([1] * (x.dim() - 1)))).to(x.dtype)


def rotary_embedding_and_write_kv(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  cos: torch.Tensor, sin: torch.Tensor, kv_cache: torch.Tensor,
                                  slot_mapping: torch.Tensor, write_kv: WriteKV,
                                  norm_of: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """RoPE of q and k (as `rotary_embedding`), then the rotated k and v [T, Hkv, D]
    stored at their slots by `write_kv` (the attention backend's). Returns the
    rotated q. With `norm_of`, q, k and v are first scaled by its inverse rms."""
    if norm_of is not None:
        scale = inverse_rms(norm_of, eps)
        q, k, v = scale_rows(q, scale), scale_rows(k, scale), scale_rows(v, scale)
    q, k = rotary_embedding(positions, q, k, cos, sin)
    write_kv(k, v, kv_cache, slot_mapping)
    return q


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def silu_and_mul(gate_up: torch.Tensor, norm_of: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up]: [T, 2I] -> [T, I], in gate_up's dtype.
    With `norm_of`, gate_up is first scaled by its inverse rms."""
    if norm_of is not None:
        gate_up = scale_rows(gate_up, inverse_rms(norm_of, eps))
    gate, up = gate_up.chunk(2, dim=-1)
    return nn.functional.silu(gate) * up
