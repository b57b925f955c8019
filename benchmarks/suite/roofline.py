"""The memory-bandwidth roofline of decoding: bytes a step must read, the card's
measured copy bandwidth, and the token rate the two allow.

Configs are plain Hugging Face Llama config dicts (helix/worker/models/presets.py).
Keys read: vocab_size, hidden_size, intermediate_size, num_hidden_layers,
num_attention_heads, and optionally num_key_value_heads (default: the number of
attention heads), head_dim (default hidden_size / num_attention_heads),
tie_word_embeddings, attention_bias and mlp_bias (all three default False, as in
transformers' LlamaConfig).
"""

from __future__ import annotations

from typing import Any

import torch


def copy_bandwidth_bytes_per_s(device: torch.device, size_bytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth of a CUDA device, in bytes per second.

    Convention: each copy of `size_bytes` counts as 2 * size_bytes of memory
    traffic (every byte is read once and written once), the usual way copy
    bandwidth is quoted as memory bandwidth. Timed with CUDA events over
    `repeats` back-to-back copies after one untimed warm-up copy; allocates two
    buffers of `size_bytes`.
    """
    if device.type != "cuda":
        raise ValueError(f"copy bandwidth is measured with CUDA events; got device {device}")
    source = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        target.copy_(source)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    return 2 * size_bytes * repeats / seconds


def head_dim(config: dict[str, Any]) -> int:
    """Per-head width: `head_dim` when given, else hidden_size / num_attention_heads."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def num_key_value_heads(config: dict[str, Any]) -> int:
    """KV heads per layer (grouped-query attention); all heads when not given."""
    return config.get("num_key_value_heads") or config["num_attention_heads"]


def _layer_parameters(config: dict[str, Any]) -> int:
    """Parameters of one decoder layer: attention, gated MLP and two RMSNorm weights."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    q_width = config["num_attention_heads"] * head_dim(config)
    kv_width = num_key_value_heads(config) * head_dim(config)
    attention = hidden * q_width + 2 * hidden * kv_width + q_width * hidden  # q, k, v, o projections
    if config.get("attention_bias", False):
        attention += q_width + 2 * kv_width + hidden
    mlp = 3 * hidden * inner  # gate, up, down
    if config.get("mlp_bias", False):
        mlp += 2 * inner + hidden
    return attention + mlp + 2 * hidden


def _table_parameters(config: dict[str, Any]) -> int:
    """Parameters of one vocabulary-by-hidden table (the embedding, or an untied lm_head)."""
    return config["vocab_size"] * config["hidden_size"]


def num_parameters(config: dict[str, Any]) -> int:
    """Parameter count of the LlamaForCausalLM a config describes (a tied lm_head counted once)."""
    tied = config.get("tie_word_embeddings", False)
    layers = config["num_hidden_layers"] * _layer_parameters(config)
    final_norm = config["hidden_size"]
    return _table_parameters(config) + layers + final_norm + (0 if tied else _table_parameters(config))


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int = 2) -> int:
    """KV-cache bytes one token occupies across all layers (a key and a value per KV head)."""
    return 2 * config["num_hidden_layers"] * num_key_value_heads(config) * head_dim(config) * dtype_bytes


def decode_bytes_per_step(config: dict[str, Any], dtype_bytes: int = 2, context_len: int = 0,
                          batch: int = 1) -> int:
    """Bytes one decode step must read from device memory, for `batch` sequences
    of `context_len` tokens each already in the KV cache (0: the weights alone).

    Every weight is read once per step, whatever the batch: the layers, the final
    norm and the lm_head in full. The input embedding contributes only `batch`
    rows, which is negligible and not counted, unless it is tied to the lm_head
    (then it is the lm_head, counted once). Each sequence also reads its whole
    KV cache. All tensors are `dtype_bytes` per element.
    """
    weights = num_parameters(config)
    if not config.get("tie_word_embeddings", False):
        weights -= _table_parameters(config)
    return weights * dtype_bytes + batch * context_len * kv_bytes_per_token(config, dtype_bytes)


def roofline_tokens_per_s(bandwidth: float, bytes_per_step: int, batch: int = 1) -> float:
    """Output tokens per second if a step took exactly its bytes at `bandwidth`
    (bytes/s): `batch` tokens per step."""
    return batch * bandwidth / bytes_per_step
