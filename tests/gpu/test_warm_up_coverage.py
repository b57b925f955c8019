"""After the start-up warm-up, no batch shape serving can send makes Triton
compile a kernel: a compile mid-serving stalls every stream for most of a
second. Skipped where CUDA is absent (CI)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.kv_cache import allocate_kv_cache
from helix.worker.models import build_model, model_source
from helix.worker.warm_up import record_compiles, warm_up_attention
from tests.tiny_models import VOCAB_SIZE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
CUDA = torch.device("cuda")
BLOCK_SIZE = 16
MAX_MODEL_LEN = 512  # the tiny models' max_position_embeddings
NUM_BLOCKS = 256


@triton.jit
def _store_one(out_ptr):
    tl.store(out_ptr, 1.0)


def random_batch(rng: random.Random) -> list[SequenceSpan]:
    """Ragged spans like a step's: decodes, verify spans, prompt chunks, with
    block tables of any width (the batch pads them to its widest)."""
    num_seqs = rng.choice([1, 2, 3, 7, 16, 33, 64])
    longest_query = rng.choice([1, 1, 2, 5, 17, 48, 300])
    spans = []
    for _ in range(num_seqs):
        context = rng.randint(1, MAX_MODEL_LEN)
        query = rng.randint(1, min(context, longest_query))
        num_blocks = -(-context // BLOCK_SIZE) + rng.randint(0, 2)
        spans.append(SequenceSpan([rng.randrange(NUM_BLOCKS) for _ in range(num_blocks)], context - query, query))
    return spans


def hook_sees_compiles() -> bool:
    """Whether `record_compiles` observes a compile here: an empty record would prove nothing otherwise."""
    seen: list[str] = []
    undo = record_compiles(seen)
    try:
        _store_one[(1,)](torch.zeros(1, device=CUDA))
    finally:
        undo()
    return bool(seen)


def test_no_batch_shape_compiles_a_kernel_after_warm_up(tiny_model_dirs: dict[str, Path]) -> None:
    model = build_model(model_source(str(tiny_model_dirs["llama"]), "auto"), "auto", CUDA, torch.bfloat16)
    assert model.attention_backend == "triton"
    kv_cache = allocate_kv_cache(model.arch, NUM_BLOCKS, BLOCK_SIZE, torch.bfloat16, CUDA)
    warm_up_attention(model, kv_cache, BLOCK_SIZE, MAX_MODEL_LEN)

    if not hook_sees_compiles():
        pytest.skip("this Triton has no JIT cache hook to observe compiles")

    compiled: list[str] = []
    undo = record_compiles(compiled)
    rng = random.Random(0)
    try:
        with torch.inference_mode():
            for _ in range(80):
                meta = build_attention_metadata(random_batch(rng), BLOCK_SIZE, CUDA)
                model(torch.randint(1, VOCAB_SIZE, (meta.num_tokens,), device=CUDA), kv_cache, meta)
        torch.cuda.synchronize()
    finally:
        undo()
    assert compiled == []
