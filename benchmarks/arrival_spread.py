"""What arrivals spread over time cost offline: the suite's 256 throughput
requests added to one engine all at once, spread evenly over `--spread`
seconds (as a burst of HTTP clients reaches a server), and all at once again
with their prompts cached; plain and speculative engines. For each run: the
time, and the seconds between step launches by step kind (steps with prompt
tokens, plain multi-steps, speculative steps by K).

    PYTHONPATH=. python3 benchmarks/arrival_spread.py [--spread 0.4]
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

import torch

from benchmarks.suite import helix_offline
from helix import LLM, SamplingParams
from helix.scheduler.outputs import SchedulerOutput
from helix.worker.models.presets import PRESETS

MODEL, DRAFT = "tinyllama-1.1b", "llama-68m"
OPTIONS = dict(max_num_seqs=256, max_num_batched_tokens=8192, num_kv_blocks=16384, num_scheduler_steps=8)
NUM_REQUESTS, OUTPUT_LEN = 256, 256


def step_kind(step: SchedulerOutput) -> str:
    if step.scheduled and not step.only_decodes:
        return "prompt"
    k = step.spec_plan.k if step.spec_plan is not None else 0
    return f"K={k}" + (" multi-step" if any(item.num_steps > 1 for item in step.scheduled) else "")


def timed_run(llm: LLM, prompts: list[list[int]], spread_s: float, tag: str) -> dict[str, Any]:
    """Add `prompts` at even intervals over `spread_s` seconds while stepping; run to the end."""
    core = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    launches: list[tuple[float, str]] = []
    schedule = core.scheduler.schedule

    def recording(*args: Any, **kwargs: Any) -> SchedulerOutput:
        step = schedule(*args, **kwargs)
        if step.scheduled:
            launches.append((time.perf_counter(), step_kind(step)))
        return step

    core.scheduler.schedule = recording  # type: ignore[method-assign]
    torch.cuda.synchronize()
    start = time.perf_counter()
    added = 0
    while added < len(prompts) or core.has_unfinished():
        elapsed = time.perf_counter() - start
        due = len(prompts) if spread_s <= 0 else min(len(prompts), int(elapsed / spread_s * len(prompts)) + 1)
        for index in range(added, due):
            core.add_request(f"{tag}-{index}", prompts[index], params)
        added = due
        core.step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    core.scheduler.schedule = schedule  # type: ignore[method-assign]
    by_kind: collections.Counter[str] = collections.Counter()
    for (launched, kind), (following, _) in zip(launches, launches[1:] + [(start + seconds, "")]):
        by_kind[kind] += following - launched
    return {"seconds": seconds, "output_tok_s": len(prompts) * OUTPUT_LEN / seconds,
            "seconds_by_step_kind": {kind: round(value, 3) for kind, value in sorted(by_kind.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, default=0.4, help="Seconds over which requests arrive.")
    args = parser.parse_args()
    vocab = PRESETS[MODEL]["vocab_size"]
    # The third run repeats the first run's prompts, which the prefix cache then holds.
    at_once, spread = (helix_offline.throughput_requests(NUM_REQUESTS, 128, 512, vocab, seed=seed) for seed in (0, 1))
    for name, extra in (("plain", {}), ("speculative", {"draft_model": DRAFT, "spec_synthetic_acceptance": 0.7})):
        llm = helix_offline.build_llm(MODEL, {**OPTIONS, **extra})
        llm.generate(helix_offline.throughput_requests(32, 128, 512, vocab, seed=2),
                     SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)  # warm-up
        for tag, prompts, spread_s in (("at once", at_once, 0.0), (f"over {args.spread} s", spread, args.spread),
                                       ("at once, cached", at_once, 0.0)):
            result = timed_run(llm, prompts, spread_s, f"{name} {tag}")
            print(f"{name} {tag}: {result['seconds']:.3f} s, {result['output_tok_s']:.0f} tok/s; seconds by step "
                  f"kind: {result['seconds_by_step_kind']}", flush=True)
        del llm
        helix_offline.release_cuda()


if __name__ == "__main__":
    main()
