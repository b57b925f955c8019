"""Which paged-attention implementation a model uses on a device."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from helix.worker.attention import torch_attention


@dataclass(frozen=True)
class AttentionBackend:
    """A module exposing `write_kv` and `paged_attention` with the reference signatures."""

    name: str
    impl: ModuleType


def select_attention_backend(device: torch.device) -> AttentionBackend:
    """Triton kernels on CUDA when Triton is installed; the PyTorch reference elsewhere."""
    if device.type == "cuda":
        from helix.worker.attention import triton_attention

        if triton_attention.AVAILABLE:
            return AttentionBackend("triton", triton_attention)
    return AttentionBackend("torch", torch_attention)
