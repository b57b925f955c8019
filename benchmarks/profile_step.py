"""Where a decode step's time goes: host phases and GPU kernels.

Wraps the engine's phases with timers (schedule, launch, update, output
processing; the target forward and drafting inside launch; collecting sampled
tokens, which waits for the GPU, and verification after it) and runs a
greedy batch-N decode, then profiles one step with torch.profiler and lists
the kernels it launched, largest total time first.

    PYTHONPATH=. python3 benchmarks/profile_step.py [--model tinyllama-1.1b] [--batch 1 32] [--draft llama-68m]
        [--no-async-scheduling]
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

from helix import LLM, SamplingParams

PHASES = (("engine.scheduler", "schedule"), ("engine.runner", "launch"), ("engine.scheduler", "update_from_output"),
          ("engine.outputs", "process"), ("engine.runner", "_forward"), ("engine.runner", "_start_sampling"),
          ("engine.runner", "_finish_sampling"), ("engine.runner", "_verify"), ("engine", "_complete"))


def instrument(llm: LLM, totals: collections.Counter[str]) -> None:
    """Accumulate wall time per phase (host time; a phase that syncs includes the wait)."""
    for owner_path, name in PHASES:
        owner: Any = llm
        for part in owner_path.split("."):
            owner = getattr(owner, part)
        if hasattr(owner, "proposer") and owner.proposer is not None and name == "launch":
            for proposer_phase in ("propose", "_forward", "_sample_next"):
                _wrap(owner.proposer, proposer_phase, totals, f"runner.proposer.{proposer_phase}")
        _wrap(owner, name, totals, f"{owner_path.split('.')[-1]}.{name}")


def _wrap(owner: Any, name: str, totals: collections.Counter[str], label: str) -> None:
    method: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - started

    setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b")
    parser.add_argument("--draft", default=None)
    parser.add_argument("--synthetic-acceptance", type=float, default=0.7)
    parser.add_argument("--speculation-mode", default="adaptive", choices=["adaptive", "fixed"])
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                        help="schedule steps ahead of results (default: the engine's default)")
    args = parser.parse_args()
    for batch in args.batch:
        options: dict[str, Any] = dict(load_format="dummy", dtype="bfloat16", num_kv_blocks=2048,
                                       max_model_len=2048, max_num_seqs=max(batch, 1),
                                       async_scheduling=args.async_scheduling)
        if args.draft:
            options.update(draft_model=args.draft, spec_synthetic_acceptance=args.synthetic_acceptance,
                           speculation_mode=args.speculation_mode,
                           num_speculative_tokens=args.num_speculative_tokens)
        llm = LLM(args.model, **options)
        prompts = [[(7 * i + j) % 30000 + 1 for j in range(128)] for i in range(batch)]
        params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        totals: collections.Counter[str] = collections.Counter()
        instrument(llm, totals)
        torch.cuda.synchronize()
        started = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        steps = args.new_tokens
        print(f"\n== {args.model} batch {batch}{' + ' + args.draft if args.draft else ''}, "
              f"async scheduling {llm.engine.async_scheduling}: "
              f"{elapsed / steps * 1e3:.3f} ms per generated token position ({elapsed:.3f} s)")
        stats = llm.stats()
        if args.draft:
            periods = llm.engine.scheduler.speculation.step_seconds(batch)
            print(f"  mean accepted length {stats['mean_accepted_length']:.2f}, step periods by K: "
                  + ", ".join(f"{k}: {seconds * 1e3:.2f} ms" for k, seconds in sorted(periods.items())))
        for label, seconds in totals.most_common():
            print(f"  {label:32s} {seconds / steps * 1e3:8.3f} ms/step")
        _kernel_table(llm, prompts)
        del llm
        torch.cuda.empty_cache()


def _kernel_table(llm: LLM, prompts: list[list[int]]) -> None:
    """Kernels of a few decode steps (prefill excluded by a 1-token warm generate first)."""
    params = SamplingParams(temperature=0.0, max_tokens=9, ignore_eos=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate(prompts, params, use_tqdm=False)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    print(f"  GPU kernels over a 9-token generate (prefill included): {sum(e.count for e in events)} launches, "
          f"{total / 1e3:.2f} ms")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:18]:
        print(f"    {event.count:6d} x {event.self_device_time_total / max(event.count, 1):8.2f} us  "
              f"{event.self_device_time_total / 1e3:8.2f} ms  {event.key[:90]}")


if __name__ == "__main__":
    main()
