"""What the adaptive speculation policy decides and measures, step by step, at
one request: the suite's (b) setting (prompt 128, 256 greedy new tokens,
synthetic acceptance a), with every decision (the K given, and the policy's
estimates then) and every step period the scheduler reports to it (the K,
whether the step was steady, milliseconds per round or position) in order.

    PYTHONPATH=. python3 benchmarks/policy_trace.py [--acceptance 0.7] [--num-scheduler-steps 8] [--out trace.json]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

from benchmarks.suite import helix_offline
from helix import LLM, SamplingParams
from helix.scheduler.speculation import Decoding, StepPlan


def trace(llm: LLM, prompt: list[int], new_tokens: int, generations: int) -> list[dict[str, Any]]:
    """Run `generations` greedy generations of `prompt` and return the policy's
    events: {"event": "decide", "k", "estimates_ms"} for each step with decoding
    requests and {"event": "observe", "k", "steady", "ms"} for each period."""
    policy = llm.engine.scheduler.speculation
    events: list[dict[str, Any]] = []
    choose, observe_step = policy.choose, policy.observe_step

    def deciding(decoding: Decoding) -> Any:
        choices, plan = choose(decoding)
        if decoding:
            events.append({"event": "decide", "k": plan.k, "estimates_ms": _estimates_ms(policy)})
        return choices, plan

    def observing(plan: StepPlan, seconds: float) -> None:
        events.append({"event": "observe", "k": plan.k, "steady": plan.steady, "ms": round(seconds * 1e3, 4)})
        observe_step(plan, seconds)

    policy.choose, policy.observe_step = deciding, observing
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    for _ in range(generations):
        llm.generate([prompt], params, use_tqdm=False)
    return events


def _estimates_ms(policy: Any) -> dict[str, float]:
    return {f"class {cls} K={k}": round(seconds * 1e3, 4)
            for cls, periods in policy.estimates().items() for k, seconds in sorted(periods.items())}


def summary(events: list[dict[str, Any]]) -> str:
    decided = collections.Counter(event["k"] for event in events if event["event"] == "decide")
    lines = ["decisions by K: " + ", ".join(f"K={k}: {count}" for k, count in sorted(decided.items()))]
    for event in events:
        if event["event"] == "decide":
            lines.append(f"decide K={event['k']}")
        else:
            lines.append(f"  observe K={event['k']} {'steady' if event['steady'] else 'unsteady'} {event['ms']} ms")
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
    parser.add_argument("--out", type=Path, help="Write the events as JSON here.")
    args = parser.parse_args()
    llm = helix_offline.build_llm(args.target, dict(
        draft_model=args.draft, num_speculative_tokens=args.num_speculative_tokens, speculation_mode="adaptive",
        spec_synthetic_acceptance=args.acceptance, num_scheduler_steps=args.num_scheduler_steps, max_num_seqs=1,
        num_kv_blocks=256))
    prompt = [(13 * j + 5) % 30000 + 1 for j in range(128)]  # the suite's decode prompt
    events = trace(llm, prompt, args.new_tokens, args.generations)
    print(summary(events))
    if args.out is not None:
        args.out.write_text(json.dumps(events, indent=1))


if __name__ == "__main__":
    main()
