"""Frozen configuration objects. Each is validated once, at construction."""

from __future__ import annotations

from dataclasses import dataclass

LOAD_FORMATS = ("auto", "safetensors", "dummy")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cuda", "cpu", "directml")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field}: {message}")


@dataclass(frozen=True)
class ModelConfig:
    """Which weights to run, where, and in what precision.

    `model` is a local Hugging Face directory, a hub id already in the local
    cache, or (with load_format="dummy") the name of a shape preset.
    """

    model: str
    device: str = "auto"
    dtype: str = "auto"
    load_format: str = "auto"
    max_model_len: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", "must be a non-empty path or name")
        _require(self.device in DEVICES or self.device.startswith("cuda:"),
                 "device", f"must be one of {DEVICES}, got {self.device!r}")
        _require(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _require(self.load_format in LOAD_FORMATS, "load_format",
                 f"must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        _require(self.max_model_len is None or self.max_model_len > 0,
                 "max_model_len", f"must be positive, got {self.max_model_len}")


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache geometry and budget.

    The number of blocks is `num_kv_blocks` when given, otherwise whatever fits
    in `gpu_memory_utilization` of the device memory once weights are loaded
    (on CUDA), or in `cpu_kv_cache_gib` on CPU and DirectML.
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 2.0
    swap_space: float = 4.0
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        _require(self.block_size > 0 and self.block_size & (self.block_size - 1) == 0,
                 "block_size", f"must be a positive power of two, got {self.block_size}")
        _require(self.num_kv_blocks is None or self.num_kv_blocks > 0,
                 "num_kv_blocks", f"must be positive, got {self.num_kv_blocks}")
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                 f"must be in (0, 1], got {self.gpu_memory_utilization}")
        _require(self.cpu_kv_cache_gib > 0, "cpu_kv_cache_gib",
                 f"must be positive, got {self.cpu_kv_cache_gib}")
        _require(self.swap_space >= 0, "swap_space", f"must be >= 0 GiB, got {self.swap_space}")
