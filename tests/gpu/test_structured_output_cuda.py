"""Structured output on CUDA, where decode steps replay graphs, run multi-step and
are scheduled ahead: constrained requests must leave those paths for the host
sampler and its mask, beside unconstrained requests that keep them.

Skipped where CUDA is absent (CI); run on a GPU machine before calling GPU
work done.
"""

from __future__ import annotations

import pytest
import torch

from helix import LLM, SamplingParams
from helix.engine_args import embedded_model_path
from tests.engine.test_structured_output import PROMPTS, assert_matches_schema, constrained

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ENGINE = dict(device="cuda", dtype="float32", num_kv_blocks=256, num_scheduler_steps=8, check_invariants=True)


def test_structured_output_on_cuda_with_and_without_speculation() -> None:
    free = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    params = [constrained(temperature=0.0)] * len(PROMPTS) + [free]
    prompts = PROMPTS + ["ROMEO:"]
    plain = LLM(embedded_model_path("target"), **ENGINE)
    expected = plain.generate(prompts, params, use_tqdm=False)
    free_alone = plain.generate(["ROMEO:"], free, use_tqdm=False)[0].outputs[0].token_ids
    del plain
    speculative = LLM(speculation_mode="fixed", num_speculative_tokens=4, **ENGINE)
    outputs = speculative.generate(prompts, params, use_tqdm=False)
    assert speculative.stats()["spec_draft_tokens"] > 0
    for want, got in zip(expected[:len(PROMPTS)], outputs[:len(PROMPTS)]):
        assert got.outputs[0].finish_reason == "stop"
        assert_matches_schema(got.outputs[0].text)
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
    assert expected[-1].outputs[0].token_ids == free_alone == outputs[-1].outputs[0].token_ids

    sampled = speculative.generate(PROMPTS, constrained(temperature=1.0, n=4, seed=5), use_tqdm=False)
    for output in sampled:
        for completion in output.outputs:
            assert_matches_schema(completion.text)
