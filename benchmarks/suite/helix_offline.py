"""Helix through the offline API (`LLM.generate`), dummy weights at real shapes.

Decode rates exclude the prefill: a generate of N tokens and one of 1 token
run on the same prompt, and the rate is (N - 1) / (t(N) - t(1)), the figure
the roofline bounds. End-to-end rates (prefill included) are reported too.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from typing import Any

import torch

from helix import LLM, SamplingParams


def build_llm(model: str, options: dict[str, Any]) -> LLM:
    """A preset shape with dummy bf16 weights unless `options` say otherwise."""
    return LLM(model, **{"load_format": "dummy", "dtype": "bfloat16", **options})


def release_cuda() -> None:
    """Give the GPU memory of dropped engines and models back (engines hold cycles)."""
    gc.collect()
    torch.cuda.empty_cache()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_generate(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, int]:
    """(seconds, output tokens) of one generate call, synchronised with the GPU."""
    _synchronize()
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    _synchronize()
    return time.perf_counter() - started, sum(len(o.outputs[0].token_ids) for o in outputs)


def _median_time(llm: LLM, prompts: list[list[int]], max_tokens: int, repeats: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    times = []
    for _ in range(repeats):
        seconds, produced = _timed_generate(llm, prompts, params)
        if produced != max_tokens * len(prompts):
            raise RuntimeError(f"expected {max_tokens * len(prompts)} tokens, got {produced}")
        times.append(seconds)
    return statistics.median(times)


def decode_rate(model: str, options: dict[str, Any], prompt_len: int, new_tokens: int,
                repeats: int = 3) -> dict[str, Any]:
    """Batch-1 greedy decode (ignore_eos) of a fresh engine: tok/s without and with the prefill."""
    llm = build_llm(model, options)
    prompt = [[(13 * j + 5) % 30000 + 1 for j in range(prompt_len)]]
    _median_time(llm, prompt, new_tokens, 1)  # warm-up: Triton compiles, allocator caches
    full = _median_time(llm, prompt, new_tokens, repeats)
    first = _median_time(llm, prompt, 1, repeats)
    stats = llm.stats()
    return {
        "decode_tok_s": (new_tokens - 1) / (full - first),
        "end_to_end_tok_s": new_tokens / full,
        "ms_per_token": (full - first) / (new_tokens - 1) * 1e3,
        "prefill_ms": first * 1e3,
        "acceptance_rate": stats["acceptance_rate"],
        "mean_accepted_length": stats["mean_accepted_length"],
        # chained rounds that ran after the request's last token, per generation of new_tokens
        # (the warm-up and the timed ones; the one-token generations chain nothing)
        "rounds_past_stop_per_generation": stats["spec_rounds_past_stop"] / (1 + repeats),
        # speculation: steps run at each K, and the adaptive policy's step-period estimates
        "policy": {key: value for key, value in stats.items()
                   if key.startswith(("spec_steps_k_", "spec_step_seconds_class_"))},
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
    }


def throughput_requests(num_requests: int, min_prompt: int, max_prompt: int, vocab: int,
                        seed: int = 0) -> list[list[int]]:
    """Prompts of lengths uniform in [min_prompt, max_prompt], random token ids."""
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(min_prompt, max_prompt))]
            for _ in range(num_requests)]


def offline_throughput(model: str, options: dict[str, Any], prompts: list[list[int]],
                       new_tokens: int) -> dict[str, Any]:
    """All prompts in one generate call of a fresh engine, `new_tokens` each (ignore_eos): output tok/s."""
    llm = build_llm(model, options)
    warm = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm.generate(prompts[:32], warm, use_tqdm=False)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    seconds, produced = _timed_generate(llm, prompts, params)
    if produced != new_tokens * len(prompts):
        raise RuntimeError(f"expected {new_tokens * len(prompts)} tokens, got {produced}")
    return {"output_tok_s": produced / seconds, "seconds": seconds, "output_tokens": produced,
            "prompt_tokens": sum(map(len, prompts)), "requests": len(prompts),
            "preemptions": llm.stats()["preemptions"]}
