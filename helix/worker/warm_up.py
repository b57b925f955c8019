"""Compile the attention kernel variants serving can reach, before it starts.

Triton compiles a kernel the first time it meets a new combination of its
compile-time parameters. For paged attention these follow the step's shape:
the query tile (a power of two from the longest query span) and whether the
keys are split and into how many parts (from the longest context and the
number of spans). The integers that change every step (token and sequence
counts, block-table width) are not specialised on. Met first under load, each
compile stalls every running stream for the better part of a second (and to
adaptive speculation, which times steps, it reads as a very dear K).
`warm_up_attention` runs one eager forward per distinct variant at start-up
instead; compiled kernels are cached on disk, so later starts are quick.

The forwards use scratch spans whose block tables point every position at
block 0, which is free at start-up: they write and read garbage there,
and nothing reads it later.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from helix.worker.attention.metadata import SequenceSpan, build_attention_metadata
from helix.worker.attention.triton_attention import choose_launch
from helix.worker.models import LlamaForCausalLM

logger = logging.getLogger(__name__)

# Query spans: one token (decode), a few (verify), and prompt chunks up to the largest query tile.
_QUERY_LENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def warm_up_attention(model: LlamaForCausalLM, kv_cache: torch.Tensor, block_size: int, max_model_len: int,
                      name: str = "model") -> int:
    """Run one forward per attention variant (query tile, split) that a single
    span of up to 256 tokens over any context length up to `max_model_len`
    selects. Returns the number of forwards run."""
    started = time.perf_counter()
    arch = model.arch
    seen = set()
    for context in _context_lens(max_model_len):
        for query_len in _QUERY_LENS:
            if query_len > context:
                continue
            spans = [SequenceSpan([0] * -(-context // block_size), context - query_len, query_len)]
            meta = build_attention_metadata(spans, block_size, kv_cache.device)
            launch = choose_launch(meta, arch.num_heads, arch.num_kv_heads, arch.head_dim, kv_cache.dtype,
                                   kv_cache.device)
            variant = (launch["block_q"], launch["decode"], launch["num_splits"])
            if variant in seen:
                continue
            seen.add(variant)
            with torch.inference_mode():
                model(torch.zeros(query_len, dtype=torch.int64, device=kv_cache.device), kv_cache, meta)
    if kv_cache.is_cuda:
        torch.cuda.synchronize(kv_cache.device)
    logger.info("%s: %d attention variants warmed up in %.1f s", name, len(seen), time.perf_counter() - started)
    return len(seen)


def _context_lens(max_model_len: int) -> list[int]:
    """Powers of two up to `max_model_len`, and it: the split factor follows the
    longest context, and doubles at most once per doubling."""
    lens = [1 << i for i in range(max_model_len.bit_length()) if 1 << i < max_model_len]
    return lens + [max_model_len]


def record_compiles(into: list[str]) -> Callable[[], None]:
    """Append a description of every kernel Triton compiles from now on to
    `into` (where this Triton has a JIT cache hook); returns the undo."""
    try:
        from triton import knobs
        runtime = knobs.runtime
    except (ImportError, AttributeError):
        return lambda: None
    previous = runtime.jit_cache_hook

    def hook(**kwargs: Any) -> None:
        into.append(str(kwargs.get("repr", "?"))[:200])

    runtime.jit_cache_hook = hook

    def undo() -> None:
        runtime.jit_cache_hook = previous

    return undo
