"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) on a paged KV cache.

Weights keep Hugging Face names except two fused projections: q/k/v into
`qkv_proj` and gate/up into `gate_up_proj` (one matmul each instead of three
and two). `load_weights` maps checkpoint names onto them.

The residual stream follows the fused add + norm pattern: each layer takes and
returns (hidden, residual), where the stream's value is hidden + residual, and
every norm after the first forms that sum and normalises it in one call
(`fused_add_rms_norm`). The elementwise ops (norms, RoPE, SiLU-and-mul) come
from one kernel set chosen at construction (`helix.worker.kernels`): fused
Triton kernels on CUDA, the PyTorch reference elsewhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import Iterable

import torch
from torch import nn

from helix.worker.attention import AttentionMetadata
from helix.worker.attention.backend import AttentionBackend
from helix.worker.kernels import torch_ops
from helix.worker.kernels.backend import LayerKernels, select_layer_kernels
from helix.worker.kernels.greedy import greedy_tokens
from helix.worker.models.arch import ArchConfig
from helix.worker.models.rope import RotaryEmbedding

# checkpoint suffix -> (fused parameter suffix, shard index)
_FUSED_SHARDS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class RMSNorm(nn.Module):
    """Normalise in fp32, scale in the model dtype (as transformers does), with `kernels`' ops."""

    def __init__(self, size: int, eps: float, kernels: ModuleType):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., size] -> normalised x (the Triton kernels take [T, size] only)."""
        return self.kernels.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, residual: [T, size] -> (norm(x + residual), x + residual)."""
        return self.kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, arch: ArchConfig, rotary: RotaryEmbedding, backend: AttentionBackend):
        super().__init__()
        self.backend = backend.impl
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        self.shard_sizes = (arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim,
                            arch.num_kv_heads * arch.head_dim)
        self.qkv_proj = nn.Linear(arch.hidden_size, sum(self.shard_sizes), bias=arch.qkv_bias)
        self.o_proj = nn.Linear(arch.num_heads * arch.head_dim, arch.hidden_size, bias=False)
        # Qwen3's per-head norms stay PyTorch: they normalise strided [T, heads, head_dim] views.
        self.q_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps, torch_ops) if arch.qk_norm else None
        self.k_norm = RMSNorm(arch.head_dim, arch.rms_norm_eps, torch_ops) if arch.qk_norm else None
        self.rotary = rotary
        self.scale = arch.head_dim ** -0.5
        self.sliding_window = arch.sliding_window

    def forward(self, hidden: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.o_proj(self.attend(hidden, kv_cache, meta))

    def attend(self, hidden: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
               norm_of: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
        """hidden [T, hidden_size] -> attention output [T, num_heads * head_dim], before
        o_proj. With folded norms, hidden is the raw stream and `norm_of` is it too."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split(self.shard_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = self.rotary(meta.positions, q, k, v, kv_cache, meta.slot_mapping, self.backend.write_kv, norm_of, eps)
        out = self.backend.paged_attention(q, kv_cache, meta, self.scale, self.sliding_window)
        return out.reshape(num_tokens, -1)


class MLP(nn.Module):
    def __init__(self, arch: ArchConfig, kernels: ModuleType):
        super().__init__()
        self.gate_up_proj = nn.Linear(arch.hidden_size, 2 * arch.intermediate_size, bias=arch.mlp_bias)
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=arch.mlp_bias)
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.kernels.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ArchConfig, rotary: RotaryEmbedding, backend: AttentionBackend, kernels: ModuleType):
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, kernels)
        self.self_attn = Attention(arch, rotary, backend)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, kernels)
        self.mlp = MLP(arch, kernels)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, kv_cache: torch.Tensor,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: [T, hidden_size], the stream being hidden + residual (residual None
        before the first layer: the stream is hidden). Returns (mlp output, residual)."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm.add_and_norm(hidden, residual)
        hidden = self.self_attn(hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm.add_and_norm(hidden, residual)
        return self.mlp(hidden), residual

    def forward_folded(self, stream: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata) -> None:
        """The layer with its norms' weights folded into qkv_proj and gate_up_proj
        (`LlamaForCausalLM.fold_norms`): stream [T, hidden_size], the residual
        stream, gains the attention and then the MLP output in place, each added
        by its output projection's GEMM; the norms' 1/rms scales are applied by
        the kernels after qkv_proj (RoPE) and gate_up_proj (SiLU-and-mul)."""
        attention = self.self_attn.attend(stream, kv_cache, meta, stream, self.input_layernorm.eps)
        stream.addmm_(attention, self.self_attn.o_proj.weight.t())
        gate_up = self.mlp.gate_up_proj(stream)
        act = self.mlp.kernels.silu_and_mul(gate_up, stream, self.post_attention_layernorm.eps)
        stream.addmm_(act, self.mlp.down_proj.weight.t())


class DecoderModel(nn.Module):
    def __init__(self, arch: ArchConfig, dtype: torch.dtype, backend: AttentionBackend, kernels: ModuleType,
                 folded_norms: bool = False):
        super().__init__()
        self.folded_norms = folded_norms
        rotary = RotaryEmbedding(arch.rope, arch.head_dim, arch.max_position_embeddings, dtype, kernels)
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch, rotary, backend, kernels) for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, kernels)

    def forward(self, input_ids: torch.Tensor, kv_caches: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        if self.folded_norms:
            stream = self.embed_tokens(input_ids)  # a new tensor: the layers add into it
            for layer, kv_cache in zip(self.layers, kv_caches):
                layer.forward_folded(stream, kv_cache, meta)
            return self.norm(stream)
        hidden, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer(hidden, residual, kv_cache, meta)
        return self.norm.add_and_norm(hidden, residual)[0]


class LlamaForCausalLM(nn.Module):
    """forward() -> final hidden states [num_tokens, hidden]; compute_logits() -> [n, vocab].

    `kernels` picks the elementwise ops; by default they are chosen for the
    device the parameters are created on (torch's default device, which
    `build_model` sets) and the dtype."""

    def __init__(self, arch: ArchConfig, dtype: torch.dtype, backend: AttentionBackend,
                 kernels: LayerKernels | None = None):
        super().__init__()
        if kernels is None:
            kernels = select_layer_kernels(torch.get_default_device(), dtype)
        self.arch = arch
        self.attention_backend = backend.name
        # Folded norms hold only while every weight write is followed by fold_norms:
        # load_weights and load_state_dict fold; dummy weights keep norms at 1.
        self.folds_norms = kernels.folds_norms and arch.norms_foldable
        self.model = DecoderModel(arch, dtype, backend, kernels.impl, self.folds_norms)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        if arch.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if self.folds_norms:
            self.register_load_state_dict_post_hook(_fold_after_load)

    def forward(self, input_ids: torch.Tensor, kv_caches: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        # input_ids: [num_tokens]; kv_caches: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
        return self.model(input_ids, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def greedy_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n] the argmax token of each row of hidden [n, hidden_size]:
        compute_logits(hidden).argmax(-1), read from the model's own logits."""
        return greedy_tokens(self.lm_head(hidden))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors in; fail if any parameter is left unset."""
        params = dict(self.named_parameters())
        pending_shards: dict[str, set[int]] = {}
        loaded: set[str] = set()
        for name, tensor in weights:
            if _is_ignored(name):
                continue
            target, shard = _map_name(name)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {self.arch.architecture}")
            param = params[target]
            with torch.no_grad():
                if shard is None:
                    _copy_checked(param, tensor, name)
                else:
                    _copy_checked(self._shard_view(target, param, shard), tensor, name)
                    pending_shards.setdefault(target, set()).add(shard)
            loaded.add(target)
        self._check_complete(params, loaded, pending_shards)
        if self.folds_norms:
            self.fold_norms()

    @torch.no_grad()
    def fold_norms(self) -> None:
        """Multiply each layer's input and post-attention norm weights into the
        columns of qkv_proj and gate_up_proj (in fp32, rounded once), then set the
        norm weights to 1, so folding again changes nothing. The final norm stays."""
        for layer in self.model.layers:
            for norm, projection in ((layer.input_layernorm, layer.self_attn.qkv_proj),
                                     (layer.post_attention_layernorm, layer.mlp.gate_up_proj)):
                projection.weight.copy_(projection.weight.float() * norm.weight.float())
                norm.weight.fill_(1.0)

    def _shard_view(self, target: str, param: torch.Tensor, shard: int) -> torch.Tensor:
        if ".qkv_proj." in target:
            sizes = self.model.layers[0].self_attn.shard_sizes
        else:
            sizes = (self.arch.intermediate_size,) * 2
        offset = sum(sizes[:shard])
        return param.narrow(0, offset, sizes[shard])

    def _check_complete(self, params: dict[str, nn.Parameter], loaded: set[str],
                        pending_shards: dict[str, set[int]]) -> None:
        missing = [n for n in params if n not in loaded
                   and not (n == "lm_head.weight" and self.arch.tie_word_embeddings)]
        partial = [n for n, shards in pending_shards.items()
                   if len(shards) != (3 if ".qkv_proj." in n else 2)]
        if missing or partial:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing + partial)[:8]}")


def _fold_after_load(model: nn.Module, incompatible_keys: object) -> None:
    """load_state_dict's post-hook on models that fold their norms."""
    assert isinstance(model, LlamaForCausalLM)
    model.fold_norms()


def _is_ignored(name: str) -> bool:
    return "rotary_emb.inv_freq" in name


def _map_name(name: str) -> tuple[str, int | None]:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in _FUSED_SHARDS:
            fused, shard = _FUSED_SHARDS[part]
            return ".".join(parts[:i] + [fused] + parts[i + 1:]), shard
    return name, None


def _copy_checked(dest: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dest.shape != src.shape:
        raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(src.shape)}, expected {tuple(dest.shape)}")
    dest.copy_(src)


def init_dummy_weights(model: nn.Module, seed: int) -> None:
    """Random weights at the model's real shapes (benchmarks at real sizes
    without a checkpoint). Drawn on the GPU where there is one. Norms stay 1."""
    device = next(model.parameters()).device
    on_device = device.type == "cuda"
    generator = torch.Generator(device=device if on_device else "cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                continue
            if on_device:
                param.normal_(0.0, 0.02, generator=generator)
            else:
                param.copy_(torch.empty(param.shape).normal_(0.0, 0.02, generator=generator))
