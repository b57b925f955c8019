"""Hugging Face transformers baselines on the same card: a LlamaForCausalLM with
random weights at a preset's shape, timed through `generate` (batch 1, eager or
compiled with a static cache) and through continuous batching (`generate_batch`).

Written against transformers 5.17 (the GPU machine's; run there on an H200)
and tested on CPU with 5.17 and 5.24. The APIs used are
`AutoModelForCausalLM.from_config(config, dtype=..., attn_implementation=...)`,
`GenerationConfig(min_new_tokens, cache_implementation, compile_config)`,
`CompileConfig`, `model.generate_batch(inputs, generation_config,
continuous_batching_config)` and `ContinuousBatchingConfig(num_blocks,
max_batch_tokens, max_memory_percent, use_cuda_graph)` from
`transformers.generation`.

Times are wall-clock seconds from `time.perf_counter`, with the device
synchronised before and after each timed call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, CompileConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM


def build_hf_model(config: dict[str, Any], dtype: torch.dtype, device: torch.device,
                   init_std: float = 0.02) -> LlamaForCausalLM:
    """An eval-mode LlamaForCausalLM of `config`'s shape, created directly on `device`
    in `dtype` with SDPA attention.

    Weights come from transformers' own init (normal with std `init_std`, RMSNorm
    weights 1), run on `device`: seconds on a GPU even at 8B, but minutes for a
    1B+ model on a CPU. std 0.02 keeps a bf16 forward finite at these depths.
    """
    llama_config = LlamaConfig(**{**config, "initializer_range": init_std})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(llama_config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, call: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of `call`, the device synchronised before and after."""
    _synchronize(device)
    started = time.perf_counter()
    result = call()
    _synchronize(device)
    return time.perf_counter() - started, result


def _decode_prompt(prompt_len: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """One deterministic prompt of `prompt_len` token ids, shape (1, prompt_len)."""
    return ((torch.arange(prompt_len, device=device) * 13 + 5) % (vocab_size - 1) + 1).unsqueeze(0)


def _greedy_config(model: LlamaForCausalLM, new_tokens: int, compile_config: CompileConfig | None) -> GenerationConfig:
    """Greedy decoding of exactly `new_tokens` tokens: min_new_tokens = max_new_tokens
    masks the EOS token until the end. A `compile_config` selects transformers'
    static KV cache, with which `generate` compiles the model's decode forward."""
    static = compile_config is not None
    return GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        pad_token_id=model.config.eos_token_id,
        cache_implementation="static" if static else None, compile_config=compile_config)


def _generate_seconds(model: LlamaForCausalLM, prompt: torch.Tensor, config: GenerationConfig) -> float:
    """Wall seconds of one `generate` call; raises unless it produced exactly max_new_tokens."""
    seconds, output = _timed(model.device, lambda: model.generate(
        prompt, attention_mask=torch.ones_like(prompt), generation_config=config))
    produced = output.shape[1] - prompt.shape[1]
    if produced != config.max_new_tokens:
        raise RuntimeError(f"generate produced {produced} tokens, expected {config.max_new_tokens}")
    return seconds


def hf_decode_tokens_per_s(model: LlamaForCausalLM, prompt_len: int = 128, new_tokens: int = 256,
                           compiled: bool = False, repeats: int = 2, warmups: int | None = None,
                           max_seconds: float = 60.0, compile_config: CompileConfig | None = None) -> dict[str, Any]:
    """Batch-1 greedy `generate` of exactly `new_tokens` tokens after a `prompt_len`-token prompt.

    Each timed repeat times one whole `generate` of `new_tokens` tokens, t(N),
    and one of a single token (the prefill), t(1). Reported, from the medians:
    `end_to_end_tok_s` = N / t(N), output tokens per second with the prefill;
    `decode_tok_s` = (N - 1) / (t(N) - t(1)), the decode-only rate, and
    `ms_per_token`, its inverse in milliseconds per step; `prefill_ms` = t(1).

    compiled=False: transformers' default dynamic KV cache, eager forward.
    compiled=True: the transformers 5.x recipe, `cache_implementation="static"`
    with which `generate` compiles the decode forward (the prefill stays eager)
    by `compile_config`, default `CompileConfig()`: inductor, mode
    "reduce-overhead" (CUDA graphs), fullgraph False. transformers compiles only
    on CUDA unless the config allows all devices.

    Untimed warm-ups come first: `warmups` whole generates (default 2 when
    compiled: the first compiles, and in CPU tests the second was still slower
    than later ones; else 1) and one 1-token generate; their total is
    `warmup_s`, compilation included. On an H200 (transformers 5.17) that was
    21-22 s eager (the first eager generate of a model is ~15 s slower than
    later ones) and 31 s (TinyLlama-1.1B) or 72 s (Llama-3-8B) compiled.
    Timed repeats stop after `repeats`, or once `max_seconds` of timed runs
    have passed (at least one always runs).
    """
    if new_tokens < 2:
        raise ValueError("the decode-only rate needs new_tokens >= 2")
    if compiled:
        compile_config = compile_config or CompileConfig()
    elif compile_config is not None:
        raise ValueError("compile_config is only used with compiled=True")
    prompt = _decode_prompt(prompt_len, model.config.vocab_size, model.device)
    full = _greedy_config(model, new_tokens, compile_config)
    first = _greedy_config(model, 1, compile_config)
    started = time.perf_counter()
    for _ in range((2 if compiled else 1) if warmups is None else warmups):
        _generate_seconds(model, prompt, full)  # the full length first: it sizes the static cache for all runs
    _generate_seconds(model, prompt, first)
    warmup_s = time.perf_counter() - started
    full_times: list[float] = []
    first_times: list[float] = []
    timed_started = time.perf_counter()
    while len(full_times) < repeats and (not full_times or time.perf_counter() - timed_started < max_seconds):
        full_times.append(_generate_seconds(model, prompt, full))
        first_times.append(_generate_seconds(model, prompt, first))
    t_full, t_first = statistics.median(full_times), statistics.median(first_times)
    return {
        "decode_tok_s": (new_tokens - 1) / (t_full - t_first),
        "end_to_end_tok_s": new_tokens / t_full,
        "ms_per_token": (t_full - t_first) / (new_tokens - 1) * 1e3,
        "prefill_ms": t_first * 1e3,
        "warmup_s": warmup_s,
        "compiled": compiled,
        "cache": "static" if compiled else "dynamic",
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": len(full_times),
    }


def _continuous_batching_config(**options: Any) -> Any:
    """transformers' ContinuousBatchingConfig, or a clear error where this version lacks it."""
    try:
        from transformers.generation import ContinuousBatchingConfig
    except ImportError as error:
        raise RuntimeError(f"transformers {transformers.__version__} has no ContinuousBatchingConfig; "
                           "generate_batch baselines were written for 5.17") from error
    return ContinuousBatchingConfig(**options)


def _generate_batch(model: LlamaForCausalLM, prompts: list[list[int]], new_tokens: int,
                    cb_options: dict[str, Any]) -> tuple[float, int]:
    """(wall seconds, output tokens) of one `generate_batch` call; raises unless every
    prompt got exactly `new_tokens` tokens without error."""
    generation_config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=-1)
    cb_config = _continuous_batching_config(**cb_options)
    seconds, outputs = _timed(model.device, lambda: model.generate_batch(
        prompts, generation_config=generation_config, continuous_batching_config=cb_config))
    lengths = [len(output.generated_tokens) for output in outputs.values() if output.error is None]
    if len(lengths) != len(prompts) or set(lengths) != {new_tokens}:
        errors = {output.error for output in outputs.values() if output.error is not None}
        raise RuntimeError(f"generate_batch returned {len(lengths)} complete outputs of {len(prompts)} prompts, "
                           f"lengths {sorted(set(lengths))}, expected {new_tokens}; errors: {errors or 'none'}")
    return seconds, sum(lengths)


def hf_generate_batch_throughput(model: LlamaForCausalLM, prompts: list[list[int]], new_tokens: int = 256,
                                 repeats: int = 1, max_seconds: float = 300.0, warmup_requests: int = 32,
                                 warmup_tokens: int = 8, num_blocks: int | None = None,
                                 max_batch_tokens: int | None = None, max_memory_percent: float | None = None,
                                 use_cuda_graph: bool | None = True) -> dict[str, Any]:
    """Offline throughput of transformers' continuous batching: all `prompts` (token
    ids) in one `model.generate_batch` call, greedy, exactly `new_tokens` output
    tokens each (EOS disabled with eos_token_id=-1), every output's length checked.

    `output_tok_s` = output tokens / `seconds`, the median wall time of the timed
    calls. Each call is whole, as a user sees it: it builds the manager, its
    paged KV cache and (with CUDA graphs) captures graphs, runs the scheduler
    thread to completion and tears it down; a fresh manager per call also keeps
    one call's prefix cache from serving the next. One untimed warm-up call
    first runs the first `warmup_requests` prompts for `warmup_tokens` tokens
    (`warmup_s`, which bounds that per-call set-up). Timed calls stop after
    `repeats`, or once `max_seconds` of timed calls have passed (one always runs).

    Settings are transformers' defaults except CUDA graphs: the model's SDPA
    attention runs as its paged variant "paged|sdpa" (5.17 switches to flash
    attention instead where the flash-attn package is installed); the KV cache
    is sized from free device memory (`num_blocks`, `max_batch_tokens` and
    `max_memory_percent` None: 90% of free memory, at most 8192 batch tokens),
    blocks of 256 tokens; FIFO scheduler; prefix sharing on; no torch.compile.
    `use_cuda_graph=True` turns CUDA graphs on, as the continuous-batching docs
    describe for throughput; None leaves the choice to transformers, which turns
    them off for attention that needs a mask, as paged SDPA does. On an H200
    (transformers 5.17, TinyLlama-1.1B shape, 256 requests of 128-512 prompt and
    256 output tokens) graphs gave 1679 output tok/s against 1327 without; their
    pre-capture logged out-of-memory warnings (the cache holds 90% of free
    memory) that transformers survives.
    """
    if not hasattr(model, "generate_batch"):
        raise RuntimeError(f"transformers {transformers.__version__} has no generate_batch (continuous batching)")
    cb_options = {"num_blocks": num_blocks, "max_batch_tokens": max_batch_tokens,
                  "max_memory_percent": max_memory_percent, "use_cuda_graph": use_cuda_graph}
    warmup_s, _ = _generate_batch(model, prompts[:warmup_requests], warmup_tokens, cb_options)
    times: list[float] = []
    produced = 0
    timed_started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - timed_started < max_seconds):
        seconds, produced = _generate_batch(model, prompts, new_tokens, cb_options)
        times.append(seconds)
    seconds = statistics.median(times)
    return {
        "output_tok_s": produced / seconds,
        "seconds": seconds,
        "output_tokens": produced,
        "prompt_tokens": sum(map(len, prompts)),
        "requests": len(prompts),
        "warmup_s": warmup_s,
        "repeats": len(times),
        "use_cuda_graph": use_cuda_graph,
    }
