"""Start-up warm-up forwards: one per attention variant, and no trace left in
what the engine computes afterwards."""

from __future__ import annotations

from pathlib import Path

from helix import LLM, SamplingParams
from helix.worker.warm_up import warm_up_attention


def test_warm_up_leaves_generation_unchanged(tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]],
                                             greedy_expected: list[list[int]]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=64, block_size=4, max_model_len=256,
              check_invariants=True)
    runner = llm.engine.runner
    variants = warm_up_attention(runner.model, runner.kv_cache, 4, 256)
    # At least one per query tile (1, 2, 4, ..., 16 with this model's GQA group) and split or not.
    assert variants >= 6
    params = SamplingParams(temperature=0.0, max_tokens=len(greedy_expected[0]), ignore_eos=True)
    outputs = llm.generate(greedy_prompts[:8], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == greedy_expected[:8]
