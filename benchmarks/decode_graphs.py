"""Decode throughput: CUDA graphs with steps scheduled ahead of results, CUDA
graphs scheduled after results, and enforce_eager; same run, same card.

Dummy TinyLlama-1.1B shape (bf16), prompt 128 tokens, 64 greedy new tokens
(ignore_eos), batch 1 and 32, as in eager_baseline.py. Reports output tok/s of
the whole generate call (prefill included, comparable with eager_baseline.py)
and the time per engine step once every request is decoding (no prefill
inside the timed steps: at large batches a generate-time difference would
mostly measure the prefill's variance).

    PYTHONPATH=. python3 benchmarks/decode_graphs.py [--batches 1 32] [--repeats 3] [--modes ahead graphs eager]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from helix import LLM, SamplingParams


# Engine options per mode.
_MODES = {
    "ahead": {"async_scheduling": True},
    "graphs": {"async_scheduling": False},
    "eager": {"async_scheduling": False, "enforce_eager": True},
}


def _timed(llm: LLM, prompts: list[list[int]], max_tokens: int, repeats: int) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up: compiles kernels, fills allocator caches
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _decode_step_ms(llm: LLM, prompts: list[list[int]], max_tokens: int, repeats: int) -> float:
    """Median ms per engine step over the middle of decoding: every request has
    left prefill (two output tokens each) and none has finished."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    times = []
    for repeat in range(repeats):
        for index, prompt in enumerate(prompts):
            engine.add_request(f"decode-{repeat}-{index}", prompt, params)
        engine.step()  # admits them
        while not all(len(r.output_token_ids) >= 2 for r in engine.scheduler.requests.values()):
            engine.step()
        steps = max(1, (max_tokens - 4) // 2)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / steps * 1e3)
        while engine.has_unfinished():
            engine.step()
    return statistics.median(times)


def _replay_ms(llm: LLM, batch: int, repeats: int = 50) -> float:
    """GPU time of one replay of the target's graph for this batch (split factor 1):
    the forward alone, without input staging, sampling or scheduling."""
    runner = llm.engine.runner.graphs
    bucket = min(b for b in runner.buckets[1] if b >= batch)
    graph, _ = runner._graphs[(bucket, 1, 1)]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=sorted(_MODES), default=["ahead", "graphs", "eager"])
    args = parser.parse_args()
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("helix.worker.cuda_graphs").setLevel(logging.INFO)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for batch in args.batches:
        prompts = [[(7 * i + j) % 32000 for j in range(args.prompt_len)] for i in range(batch)]
        for mode in args.modes:
            started = time.perf_counter()
            llm = LLM(args.model, load_format="dummy", num_kv_blocks=4096, max_model_len=2048, **_MODES[mode])
            build_s = time.perf_counter() - started
            full = _timed(llm, prompts, args.new_tokens, args.repeats)
            step_ms = _decode_step_ms(llm, prompts, args.new_tokens, args.repeats)
            graphs = llm.engine.runner.graphs
            replay = f"{_replay_ms(llm, batch):.2f}" if graphs else "-"
            rows.append((batch, mode, batch * args.new_tokens / full, step_ms, replay, build_s))
            print(f"batch={batch:3d} {mode:12s} {rows[-1][2]:9.1f} output tok/s  {step_ms:6.2f} ms/decode step  "
                  f"replay {replay} ms  engine build {build_s:5.1f} s", flush=True)
            del llm
            torch.cuda.empty_cache()
    print(f"\n{args.model} dummy bf16, prompt {args.prompt_len}, {args.new_tokens} new tokens")
    print("| batch | mode | output tok/s | ms per decode step | graph replay ms | engine build s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch, mode, rate, step_ms, replay, build_s in rows:
        print(f"| {batch} | {mode} | {rate:.1f} | {step_ms:.2f} | {replay} | {build_s:.1f} |")


if __name__ == "__main__":
    main()
