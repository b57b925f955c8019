"""Paged attention in plain PyTorch: the CPU/DirectML path and the oracle.

Cache layout, per layer: kv_cache[0] holds keys and kv_cache[1] values, each
[num_blocks, block_size, num_kv_heads, head_dim]. Only ops available in
torch 2.4 are used, so this path also runs under torch-directml.
"""

from __future__ import annotations

import torch

from helix.worker.attention.metadata import AttentionMetadata


def write_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store each new token's K/V at its slot. key/value: [num_tokens, num_kv_heads, head_dim]."""
    _, _, _, num_kv_heads, head_dim = kv_cache.shape
    kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
    kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)


def paged_attention(query: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                    scale: float, sliding_window: int | None = None) -> torch.Tensor:
    """Causal attention of every query span over its sequence's cached context.

    query: [num_tokens, num_heads, head_dim]; the span's own K/V must already
    be written (write_kv). Returns [num_tokens, num_heads, head_dim].
    """
    out = torch.empty_like(query)
    for i in range(meta.num_seqs):
        start, end = meta.query_start_loc_host[i], meta.query_start_loc_host[i + 1]
        if end == start:
            continue
        keys, values = _gather_context(kv_cache, meta.block_tables[i], meta.seq_lens_host[i], meta.block_size)
        out[start:end] = _attend(query[start:end], keys, values, scale, sliding_window)
    return out


def _gather_context(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int,
                    block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    num_blocks = -(-seq_len // block_size)
    blocks = block_table[:num_blocks].long()
    _, _, _, num_kv_heads, head_dim = kv_cache.shape
    keys = kv_cache[0, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
    values = kv_cache[1, blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len]
    return keys, values


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float,
            sliding_window: int | None) -> torch.Tensor:
    # query: [Q, H, D]; keys/values: [L, Hkv, D]; the Q queries are the last Q positions of L.
    num_queries, num_heads, head_dim = query.shape
    context_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    q = query.reshape(num_queries, num_kv_heads, group, head_dim).float()
    scores = torch.einsum("qhgd,khd->hgqk", q, keys.float()) * scale  # [Hkv, G, Q, L]
    query_pos = torch.arange(context_len - num_queries, context_len, device=query.device).unsqueeze(1)
    key_pos = torch.arange(context_len, device=query.device).unsqueeze(0)
    visible = key_pos <= query_pos
    if sliding_window is not None:
        visible = visible & (key_pos > query_pos - sliding_window)
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("hgqk,khd->qhgd", probs, values.float())
    return out.reshape(num_queries, num_heads, head_dim).to(query.dtype)
