"""Where the device waits during batch-1 decoding: the suite's (a)/(b) setting
(prompt 128, greedy new tokens, synthetic acceptance for speculation), timed
untraced a few times (with the Triton compiles each generation set off: a
compile mid-generation is a stall of tens of milliseconds or more), then
once under a CUDA-activity trace. The trace gives
the device's busy time against the window, its idle gaps by length, the
kernel pairs around the longest gaps (what the device finished, what it
waited for), and the kernels by total time. A gap before a kernel is time
the host had not launched it yet, or a wait it was queued behind.

    PYTHONPATH=. python3 benchmarks/device_idle.py [--model tinyllama-1.1b] [--draft llama-68m]
        [--k 4] [--mode fixed] [--acceptance 0.7] [--num-scheduler-steps 8] [--new-tokens 256] [--reps 5]
"""

from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

GAP_BOUNDS_US = (5.0, 20.0, 50.0, 200.0)  # gap classes: below 5 us, 5-20, 20-50, 50-200, 200 and up


@dataclass(frozen=True)
class Activity:
    """One device activity (a kernel or a copy), times in microseconds."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class IdleReport:
    busy_us: float                               # time with at least one activity running
    window_us: float                             # first start to last end
    gaps: list[tuple[float, str, str]]           # (length, activity before, activity after), in order


def idle_gaps(activities: Iterable[Activity]) -> IdleReport:
    """The device's busy time and idle gaps: overlapping activities merge into
    one busy span; a gap lies between two spans, named by the activity that
    ended the first (the last to start in it) and the one that began the next."""
    ordered = sorted(activities, key=lambda a: a.start)
    if not ordered:
        return IdleReport(0.0, 0.0, [])
    busy, gaps = 0.0, []
    span_start, span_end, last_name = ordered[0].start, ordered[0].end, ordered[0].name
    for activity in ordered[1:]:
        if activity.start > span_end:
            busy += span_end - span_start
            gaps.append((activity.start - span_end, last_name, activity.name))
            span_start, span_end = activity.start, activity.end
        else:
            span_end = max(span_end, activity.end)
        last_name = activity.name
    busy += span_end - span_start
    return IdleReport(busy, span_end - ordered[0].start, gaps)


def summary(report: IdleReport, activities: Sequence[Activity], top: int = 12) -> str:
    lines = [f"device busy {report.busy_us / 1e3:.1f} ms of a {report.window_us / 1e3:.1f} ms window, "
             f"{len(activities)} activities"]
    bounds = (0.0, *GAP_BOUNDS_US, float("inf"))
    for low, high in zip(bounds, bounds[1:]):
        lengths = [length for length, _, _ in report.gaps if low <= length < high]
        lines.append(f"  gaps {low:>5.0f}-{high:<5.0f} us: {len(lengths):6d}, {sum(lengths) / 1e3:8.2f} ms")
    around: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for length, before, after in report.gaps:
        if length >= GAP_BOUNDS_US[1]:
            key = f"{before[:50]} -> {after[:50]}"
            around[key] += length
            count[key] += 1
    lines.append(f"  gaps of {GAP_BOUNDS_US[1]:.0f} us and more, by the activities around them:")
    lines += [f"    {total / 1e3:7.2f} ms {count[key]:5d}x  {key}" for key, total in around.most_common(top)]
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for activity in activities:
        by_name[activity.name[:70]].append(activity.end - activity.start)
    lines.append("  activities by total time:")
    lines += [f"    {sum(times) / 1e3:7.2f} ms {len(times):6d}x {sum(times) / len(times):7.1f} us  {name}"
              for name, times in sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]]
    return "\n".join(lines)


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.suite import helix_offline
    from helix import SamplingParams
    from helix.worker.warm_up import record_compiles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b")
    parser.add_argument("--draft", default=None, help="a draft model: speculative decoding")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens (K_max when adaptive)")
    parser.add_argument("--mode", default="fixed", choices=("fixed", "adaptive"))
    parser.add_argument("--acceptance", type=float, default=0.7)
    parser.add_argument("--num-scheduler-steps", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    options: dict[str, Any] = dict(max_num_seqs=1, num_kv_blocks=256, num_scheduler_steps=args.num_scheduler_steps)
    if args.draft:
        options.update(draft_model=args.draft, num_speculative_tokens=args.k, speculation_mode=args.mode,
                       spec_synthetic_acceptance=args.acceptance)
    llm = helix_offline.build_llm(args.model, options)
    prompt = [[(13 * j + 5) % 30000 + 1 for j in range(128)]]
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)

    def timed(compiles: list[str]) -> float:
        undo = record_compiles(compiles)
        try:
            torch.cuda.synchronize()
            started = time.perf_counter()
            llm.generate(prompt, params, use_tqdm=False)
            torch.cuda.synchronize()
            return time.perf_counter() - started
        finally:
            undo()

    timed([])  # warm-up
    compiles: list[list[str]] = [[] for _ in range(args.reps)]
    walls = [timed(compiled) for compiled in compiles]
    print(f"{args.model} {options}: untraced {' '.join(f'{w * 1e3:.1f}' for w in walls)} ms for "
          f"{args.new_tokens} tokens ({args.new_tokens / min(walls):.0f} tok/s at best); Triton compiles per "
          f"generation {[len(compiled) for compiled in compiles]}")
    for compiled in compiles:
        for kernel in compiled:
            print(f"  compiled mid-generation: {kernel[:120]}")
    with profile(activities=[ProfilerActivity.CUDA]) as traced:
        wall = timed([])
    activities = [Activity(event.name, event.time_range.start, event.time_range.end) for event in traced.events()
                  if event.device_type.name == "CUDA"]
    print(f"traced: {wall * 1e3:.1f} ms wall")
    print(summary(idle_gaps(activities), activities))


if __name__ == "__main__":
    main()
