"""EngineArgs: every user-facing engine option in one flat, frozen record,
validated once at construction.

`LLM(**kwargs)`, `AsyncEngine(**kwargs)` and the `helix serve` flags are all
generated from these fields, so an option exists everywhere or nowhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any


_LOAD_FORMATS = ("auto", "safetensors", "dummy")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICES = ("auto", "cuda", "cpu", "directml")


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")


def _option(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


def embedded_model_path(role: str) -> str:
    """The embedded helix-tiny "target" or "draft" shipped inside the package."""
    return str(resources.files("helix") / "assets" / "helix-tiny" / role)


@dataclass(frozen=True)
class EngineArgs:
    model: str | None = _option(None, "Hugging Face directory or cached hub id; None serves the embedded helix-tiny model.")
    draft_model: str | None = _option(None, "Draft model for speculative decoding (same vocabulary as the model).")
    num_speculative_tokens: int = _option(4, "Most draft tokens verified per step (K).")
    speculative_method: str | None = _option(None, "draft | ngram (prompt lookup, no draft model); default: draft when a draft model is given.")
    speculation_mode: str = _option("adaptive", "adaptive (K per step from acceptance and measured step times) | fixed (always K).")
    spec_synthetic_acceptance: float | None = _option(
        None, "Benchmark only: accept each draft token by a seeded coin of this probability instead of by the "
              "target's distribution; every draft and verify pass still runs, but the output is not the model's. "
              "`helix serve` refuses it without --benchmark-mode.")
    device: str = _option("auto", "auto | cuda | cpu | directml.")
    dtype: str = _option("auto", "auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA, fp32 on CPU, fp16 on DirectML).")
    load_format: str = _option("auto", "auto (safetensors) | dummy (random weights at the model's shape).")
    block_size: int = _option(16, "Tokens per KV-cache block.")
    num_kv_blocks: int | None = _option(None, "Number of KV blocks; default: as many as the memory budget allows.")
    gpu_memory_utilization: float = _option(0.9, "Fraction of GPU memory for weights plus KV cache.")
    cpu_kv_cache_gib: float = _option(2.0, "KV cache budget in GiB on CPU and DirectML.")
    swap_space: float = _option(4.0, "CPU swap space for preempted requests' KV, in GiB (0 = recompute only).")
    max_num_seqs: int = _option(256, "Most requests in one batch.")
    max_num_batched_tokens: int = _option(2048, "Most tokens in one step (prompts longer than this are chunked).")
    max_model_len: int | None = _option(None, "Longest prompt + output; default: the model's max_position_embeddings.")
    enable_prefix_caching: bool = _option(True, "Reuse KV blocks of identical prompt prefixes.")
    scheduling_policy: str = _option("fcfs", "fcfs | priority (lower `priority` value runs first).")
    seed: int = _option(0, "Seed for dummy weights and for sampling of requests without their own seed.")
    check_invariants: bool = _option(
        os.environ.get("HELIX_CHECK_INVARIANTS", "0") == "1",
        "Debug: verify KV block accounting after every step (default from HELIX_CHECK_INVARIANTS=1).")
    num_scheduler_steps: int = _option(
        1, "Decode tokens per scheduled step (multi-step): a step where every request only decodes runs this "
           "many forwards, each fed the token the one before chose on the device, before the host reads the "
           "tokens, checks stops and schedules again. Amortises the host's per-step work over the steps at "
           "large batches; stops are found and new requests admitted only between multi-steps.")
    enforce_eager: bool = _option(False, "Disable CUDA graphs (run every forward eagerly).")
    async_scheduling: bool | None = _option(
        None, "Schedule and launch each step before the previous step's tokens are read back, so the host's "
              "work overlaps the device's (plain decoding; speculation and penalties wait for results). "
              "Default: on for CUDA.")

    def __post_init__(self) -> None:
        """Each field is checked once, here; errors name the field."""
        _require(self.model is None or bool(self.model), "model", "must be a non-empty path or name")
        _require(self.device in _DEVICES or self.device.startswith("cuda:"), "device",
                 f"must be one of {_DEVICES} or cuda:N, got {self.device!r}")
        _require(self.dtype in _DTYPES, "dtype", f"must be one of {_DTYPES}, got {self.dtype!r}")
        _require(self.load_format in _LOAD_FORMATS, "load_format",
                 f"must be one of {_LOAD_FORMATS}, got {self.load_format!r}")
        _require(self.max_model_len is None or self.max_model_len > 0, "max_model_len",
                 f"must be positive, got {self.max_model_len}")
        _require(self.block_size > 0 and self.block_size & (self.block_size - 1) == 0, "block_size",
                 f"must be a positive power of two, got {self.block_size}")
        _require(self.num_kv_blocks is None or self.num_kv_blocks > 0, "num_kv_blocks",
                 f"must be positive, got {self.num_kv_blocks}")
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization",
                 f"must be in (0, 1], got {self.gpu_memory_utilization}")
        _require(self.cpu_kv_cache_gib > 0, "cpu_kv_cache_gib", f"must be positive, got {self.cpu_kv_cache_gib}")
        _require(self.swap_space >= 0, "swap_space", f"must be >= 0 GiB, got {self.swap_space}")
        _require(self.num_scheduler_steps >= 1, "num_scheduler_steps",
                 f"must be >= 1, got {self.num_scheduler_steps}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    @property
    def target_path(self) -> str:
        return self.model or embedded_model_path("target")

    @property
    def draft_path(self) -> str | None:
        """The draft model; with no model given, the embedded pair speculates."""
        if self.draft_model is not None or self.model is not None:
            return self.draft_model
        return embedded_model_path("draft") if self.speculative_method in (None, "draft") else None

    @property
    def method(self) -> str | None:
        if self.speculative_method is not None:
            return self.speculative_method
        return "draft" if self.draft_path is not None else None
