"""Paged attention: one interface, a PyTorch reference now, GPU kernels later."""

from helix.worker.attention.metadata import AttentionMetadata, SequenceSpan, build_attention_metadata
from helix.worker.attention.torch_attention import paged_attention, write_kv

__all__ = ["AttentionMetadata", "SequenceSpan", "build_attention_metadata", "paged_attention", "write_kv"]
