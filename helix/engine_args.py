"""EngineArgs: every user-facing engine option in one flat, frozen record.

`LLM(**kwargs)`, `AsyncEngine(**kwargs)` and the `helix serve` flags are all
generated from these fields, so an option exists everywhere or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any


def _option(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


def default_model_path() -> str:
    """The embedded helix-tiny target shipped inside the package."""
    return str(resources.files("helix") / "assets" / "helix-tiny" / "target")


@dataclass(frozen=True)
class EngineArgs:
    model: str | None = _option(None, "Hugging Face directory or cached hub id; None serves the embedded helix-tiny model.")
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
    check_invariants: bool = _option(False, "Debug: verify KV block accounting after every step.")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "EngineArgs":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    @property
    def model_or_default(self) -> str:
        return self.model or default_model_path()
