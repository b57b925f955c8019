"""The engine on CUDA: the same exactness checks as on the CPU, on the GPU.

Skipped where CUDA is absent (CI); run on a GPU machine before calling GPU
work done.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix import LLM, SamplingParams
from helix.block_manager.block_pool import BlockPool
from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.kv_cache import allocate_kv_cache
from helix.worker.models import build_model, model_source
from tests.reference import hf_greedy
from tests.tiny_models import ARCHITECTURES, VOCAB_SIZE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_batched_prefill_logits_match_transformers_on_cuda(arch: str, tiny_model_dirs: dict[str, Path]) -> None:
    directory = tiny_model_dirs[arch]
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(CUDA).eval()
    model = build_model(model_source(str(directory), "auto"), "auto", CUDA, torch.float32)
    assert model.attention_backend == "triton"
    rng = random.Random(0)
    prompts = [[rng.randrange(1, VOCAB_SIZE) for _ in range(n)] for n in (1, 9, 40)]
    pool = BlockPool(64)
    kv_cache = allocate_kv_cache(model.arch, 64, 4, torch.float32, CUDA)
    spans = [SequenceSpan(pool.allocate(-(-len(p) // 4)), 0, len(p)) for p in prompts]
    meta = build_attention_metadata(spans, 4, CUDA)
    with torch.no_grad():
        logits = model.compute_logits(model(torch.tensor(sum(prompts, []), device=CUDA), kv_cache, meta))
        for i, prompt in enumerate(prompts):
            expected = reference(torch.tensor([prompt], device=CUDA)).logits[0].float()
            start, end = meta.query_start_loc_host[i], meta.query_start_loc_host[i + 1]
            # TF32 may be on for CUDA matmuls: allow 1e-3 instead of the CPU's 1e-4.
            assert (logits[start:end] - expected).abs().max().item() < 1e-3
            assert torch.equal(logits[start:end].argmax(-1), expected.argmax(-1))


def test_engine_greedy_with_swapping_matches_transformers_on_cuda(tiny_model_dirs: dict[str, Path]) -> None:
    directory = tiny_model_dirs["llama"]
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(CUDA).eval()
    rng = random.Random(1)
    prompts = [[rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randrange(1, 50))] for _ in range(16)]
    llm = LLM(str(directory), device="cuda", dtype="float32", num_kv_blocks=40, block_size=4, swap_space=1.0,
              check_invariants=True)
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert llm.stats()["swapped_out"] > 0
    for prompt, output in zip(prompts, outputs):
        assert output.outputs[0].token_ids == hf_greedy(reference, prompt, 16)
    stats = llm.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"] and stats["cpu_swap_blocks_used"] == 0


def test_seeded_sampling_reproduces_on_cuda(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), device="cuda", num_kv_blocks=128, block_size=4)
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=7, ignore_eos=True)
    first = llm.generate([[5, 6, 7]], params, use_tqdm=False)[0].outputs[0].token_ids
    again = llm.generate([[9, 9], [5, 6, 7]], params, use_tqdm=False)[1].outputs[0].token_ids
    assert first == again
