"""What the adaptive speculation policy decides and measures, step by step, at
one request: the suite's (b) setting (prompt 128, 256 greedy new tokens,
synthetic acceptance a), with every decision (the K given, the batch size,
and the policy's estimates then) and every step period the scheduler reports
to it (the K, the batch size, whether the step was steady, milliseconds per
round or position) in order.

`--burst N` first sends N other prompts at once (128-512 tokens, as the
served benchmark's warm-up does) and traces them too: the state a burst
leaves the policy in is what the single requests after it start from.

    PYTHONPATH=. python3 benchmarks/policy_trace.py [--acceptance 0.7] [--num-scheduler-steps 8] [--burst 256]
        [--out trace.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any, Sequence

from benchmarks.suite import helix_offline
from helix import LLM, SamplingParams
from helix.scheduler.speculation import Decoding, StepPlan


def trace(llm: LLM, prompt: list[int], new_tokens: int, generations: int,
          burst: Sequence[list[int]] = ()) -> list[dict[str, Any]]:
    """Run `generations` greedy generations of `prompt`, after one generation of
    every `burst` prompt at once if any, and return the policy's events:
    {"event": "phase", "name"} where each part starts ("burst", "single");
    {"event": "decide", "k", "batch", "estimates_ms"} for each step with
    decoding requests; {"event": "observe", "k", "batch", "steady", "probe",
    "ms" (per position or round), "positions"} for each period."""
    policy = llm.engine.scheduler.speculation
    events: list[dict[str, Any]] = []
    choose, observe_step = policy.choose, policy.observe_step

    def deciding(decoding: Decoding) -> Any:
        choices, plan = choose(decoding)
        if decoding:
            events.append({"event": "decide", "k": plan.k, "batch": len(decoding),
                           "estimates_ms": _estimates_ms(policy)})
        return choices, plan

    def observing(plan: StepPlan, seconds: float, positions: int = 1) -> None:
        events.append({"event": "observe", "k": plan.k, "batch": plan.num_decoding, "steady": plan.steady,
                       "probe": plan.break_even is not None, "ms": round(seconds / positions * 1e3, 4),
                       "positions": positions})
        observe_step(plan, seconds, positions)

    policy.choose, policy.observe_step = deciding, observing
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    if burst:
        events.append({"event": "phase", "name": "burst"})
        llm.generate(list(burst), params, use_tqdm=False)
    events.append({"event": "phase", "name": "single"})
    for _ in range(generations):
        llm.generate([prompt], params, use_tqdm=False)
    return events


def _estimates_ms(policy: Any) -> dict[str, float]:
    return {f"class {cls} K={k}": round(seconds * 1e3, 4)
            for cls, periods in policy.estimates().items() for k, seconds in sorted(periods.items())}


def summary(events: list[dict[str, Any]]) -> str:
    """Decisions by K per phase, then every event in order."""
    decided: dict[str, collections.Counter[int]] = {}
    phase = "single"
    for event in events:
        if event["event"] == "phase":
            phase = event["name"]
        elif event["event"] == "decide":
            decided.setdefault(phase, collections.Counter())[event["k"]] += 1
    lines = [f"{name}: decisions by K: " + ", ".join(f"K={k}: {count}" for k, count in sorted(counts.items()))
             for name, counts in decided.items()]
    for event in events:
        if event["event"] == "phase":
            lines.append(f"== {event['name']}")
        elif event["event"] == "decide":
            lines.append(f"decide K={event['k']} batch {event['batch']}")
        else:
            lines.append(f"  observe K={event['k']} batch {event['batch']} "
                         f"{'steady' if event['steady'] else 'unsteady'}{' probe' if event['probe'] else ''} "
                         f"{event['positions']} x {event['ms']} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="tinyllama-1.1b")
    parser.add_argument("--draft", default="llama-68m")
    parser.add_argument("--acceptance", type=float, default=0.7)
    parser.add_argument("--num-speculative-tokens", type=int, default=8)
    parser.add_argument("--num-scheduler-steps", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--burst", type=int, default=0, help="Send this many other prompts at once first.")
    parser.add_argument("--out", type=Path, help="Write the events as JSON here.")
    args = parser.parse_args()
    # One request at a time, or the served benchmark's engine options where a burst comes first.
    capacity = (dict(max_num_seqs=1, num_kv_blocks=256) if not args.burst else
                dict(max_num_seqs=256, num_kv_blocks=16384, max_num_batched_tokens=8192))
    llm = helix_offline.build_llm(args.target, dict(
        draft_model=args.draft, num_speculative_tokens=args.num_speculative_tokens, speculation_mode="adaptive",
        spec_synthetic_acceptance=args.acceptance, num_scheduler_steps=args.num_scheduler_steps, **capacity))
    prompt = [(13 * j + 5) % 30000 + 1 for j in range(128)]  # the suite's decode prompt
    burst = helix_offline.throughput_requests(args.burst, 128, 512, llm.engine.arch.vocab_size, seed=1)
    events = trace(llm, prompt, args.new_tokens, args.generations, burst)
    print(summary(events))
    if args.out is not None:
        args.out.write_text(json.dumps(events, indent=1))


if __name__ == "__main__":
    main()
