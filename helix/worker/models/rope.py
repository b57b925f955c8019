"""Rotary position embeddings (default, linear and llama3-style scaling)."""

from __future__ import annotations

import math
from types import ModuleType

import torch

from helix.worker.kernels.torch_ops import WriteKV
from helix.worker.models.arch import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies, scaled as the config asks."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.scaling_type == "linear":
        return inv_freq / rope.factor
    if rope.scaling_type == "llama3":
        return _llama3_scaled(inv_freq, rope)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    # Long wavelengths are divided by `factor`, short ones kept, the band
    # between the two cut-offs interpolated smoothly (Llama 3.1 recipe).
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Applies RoPE to q and k given each token's absolute position, and stores
    the new keys and values in the KV cache.

    cos/sin caches: [max_positions, head_dim] in the model dtype (the angles
    of each frequency repeated for both halves, rotate-half convention)."""

    def __init__(self, rope: RopeConfig, head_dim: int, max_positions: int, dtype: torch.dtype,
                 kernels: ModuleType):
        super().__init__()
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inverse_frequencies(rope, head_dim))
        angles = torch.cat((freqs, freqs), dim=-1)  # [max_positions, head_dim]
        self.register_buffer("cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dtype), persistent=False)
        self.kernels = kernels

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, slot_mapping: torch.Tensor, write_kv: WriteKV,
                norm_of: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
        """The rotated q; the rotated k and v go to the cache at their slots (one
        kernel with the Triton ops, else `write_kv`, the attention backend's).
        positions: [T]; q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim];
        norm_of: [T, hidden], the stream whose folded norm scales q, k and v first."""
        return self.kernels.rotary_embedding_and_write_kv(positions, q, k, v, self.cos, self.sin, kv_cache,
                                                          slot_mapping, write_kv, norm_of, eps)
