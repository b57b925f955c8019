"""Which implementation of the layer ops (norms, RoPE, SiLU-and-mul) a model uses."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from helix.worker.kernels import torch_ops


@dataclass(frozen=True)
class LayerKernels:
    """A module exposing `rms_norm`, `fused_add_rms_norm`, `rotary_embedding`,
    `rotary_embedding_and_write_kv` and `silu_and_mul` with the `torch_ops`
    signatures. `folds_norms`: models fold the layers' norm weights into the
    projections after them where the architecture allows (`torch_ops`' notes),
    which saves the two norm kernels of every layer; the PyTorch reference
    keeps the norms, as transformers computes them."""

    name: str
    impl: ModuleType
    folds_norms: bool = False


def select_layer_kernels(device: torch.device, dtype: torch.dtype) -> LayerKernels:
    """Fused Triton kernels on CUDA when Triton is installed and supports the
    dtype; the PyTorch reference elsewhere."""
    if device.type == "cuda":
        from helix.worker.kernels import triton_ops

        if triton_ops.AVAILABLE and dtype in triton_ops.SUPPORTED_DTYPES:
            return LayerKernels("triton", triton_ops, folds_norms=True)
    return LayerKernels("torch", torch_ops)
