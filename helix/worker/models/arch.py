"""The shape of a Llama-family model, read once from a Hugging Face config.

Llama, Mistral, Qwen2 and Qwen3 share one decoder shape; they differ only in a
few switches (QKV bias, per-head q/k norms, sliding window), captured here so
the model code never looks at the raw Hugging Face config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)

_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    scaling_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None

    @property
    def norms_foldable(self) -> bool:
        """Whether the RMSNorm before the qkv and gate_up projections can fold into their
        weights: the norm's per-token scale must pass through to the next op (no bias to
        add after the projection, no per-head norm before RoPE)."""
        return not (self.qkv_bias or self.mlp_bias or self.qk_norm)

    @classmethod
    def from_hf(cls, hf_config: Any) -> "ArchConfig":
        architecture = _architecture_of(hf_config)
        hidden_act = getattr(hf_config, "hidden_act", "silu")
        if hidden_act != "silu":
            raise ValueError(f"hidden_act {hidden_act!r} is not supported (only silu)")
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        return cls(
            architecture=architecture,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            max_position_embeddings=hf_config.max_position_embeddings,
            rope=_rope_config_of(hf_config),
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            qkv_bias=is_qwen2 or bool(getattr(hf_config, "attention_bias", False)),
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            sliding_window=_sliding_window_of(architecture, hf_config),
        )


def _architecture_of(hf_config: Any) -> str:
    architectures = getattr(hf_config, "architectures", None) or []
    for name in architectures:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    found = ", ".join(architectures) or f"model_type={getattr(hf_config, 'model_type', None)!r}"
    raise ValueError(
        f"unsupported architecture ({found}); Helix supports {', '.join(SUPPORTED_ARCHITECTURES)}")


def _rope_config_of(hf_config: Any) -> RopeConfig:
    # transformers >= 5 keeps everything in `rope_parameters`; older releases
    # split it into `rope_theta` and `rope_scaling`.
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(hf_config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    scaling_type = params.get("rope_type", params.get("type", "default"))
    if scaling_type not in _ROPE_TYPES:
        raise ValueError(f"rope type {scaling_type!r} is not supported; supported: {_ROPE_TYPES}")
    return RopeConfig(
        theta=float(params["rope_theta"]),
        scaling_type=scaling_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _sliding_window_of(architecture: str, hf_config: Any) -> int | None:
    if architecture == "MistralForCausalLM":
        return getattr(hf_config, "sliding_window", None)
    if architecture.startswith("Qwen") and getattr(hf_config, "use_sliding_window", False):
        raise ValueError("Qwen sliding-window attention (use_sliding_window=true) is not supported")
    return None
