"""Where first-use stalls hit: engine steps far slower than their kind.

Builds an engine like `helix serve`'s (by default target A with draft A and
synthetic acceptance 0.7, adaptive K), serves requests one at a time (prompts
of 128-512 tokens, as the served benchmark sends), times every engine step,
and lists the slow ones with the shape of what they launched (sequences,
longest query span, K, how far the draft model lagged), the Triton kernels
compiled meanwhile (from Triton's JIT cache hook, where this Triton has one)
and the time full garbage collections took in them.
At the end: the adaptive policy's step-period estimates for one request.

    PYTHONPATH=. python3 benchmarks/first_use_stalls.py [--model tinyllama-1.1b] [--draft llama-68m]
        [--load-format dummy] [--requests 12] [--output-len 256] [--slow-ms 20]
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from benchmarks.suite.helix_offline import throughput_requests
from helix import LLM, SamplingParams
from helix.scheduler.outputs import SchedulerOutput
from helix.worker.warm_up import record_compiles


@dataclass
class StepRecord:
    milliseconds: float
    launched: list[tuple[int, int, int, int]]  # per launch: (sequences, longest span, K, longest draft lag)
    compiled: list[str] = field(default_factory=list)
    collecting_ms: float = 0.0  # full (generation 2) garbage collections during the step


def shape(step: SchedulerOutput) -> tuple[int, int, int, int]:
    items = step.scheduled
    return (len(items), max((s.num_new_tokens for s in items), default=0),
            max((s.num_spec_tokens for s in items), default=0),
            max((s.request.num_tokens - s.request.num_draft_computed_tokens for s in items), default=0))


def record_full_collections(into: list[float]) -> Callable[[], None]:
    """Append the milliseconds of every full garbage collection to `into`; returns the undo."""
    started: list[float] = []

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            into.append((time.perf_counter() - started[0]) * 1e3)

    gc.callbacks.append(on_collection)
    return lambda: gc.callbacks.remove(on_collection)


def serve_one_at_a_time(llm: LLM, prompts: list[list[int]], output_len: int) -> list[StepRecord]:
    engine = llm.engine
    launches: list[tuple[int, int, int, int]] = []
    compiles: list[str] = []
    launch = engine.runner.launch

    def recording(step: SchedulerOutput) -> Any:
        launches.append(shape(step))
        return launch(step)

    engine.runner.launch = recording
    collections: list[float] = []
    undo_compiles = record_compiles(compiles)
    undo_collections = record_full_collections(collections)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    records = []
    try:
        for index, prompt in enumerate(prompts):
            engine.add_request(f"probe-{index}", prompt, params)
            while engine.has_unfinished():
                launched, compiled, collected = len(launches), len(compiles), len(collections)
                started = time.perf_counter()
                engine.step()
                records.append(StepRecord((time.perf_counter() - started) * 1e3, launches[launched:],
                                          compiles[compiled:], sum(collections[collected:])))
    finally:
        undo_compiles()
        undo_collections()
        engine.runner.launch = launch
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinyllama-1.1b")
    parser.add_argument("--draft", default="llama-68m", help="'none' for plain decoding")
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--synthetic-acceptance", type=float, default=0.7)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--min-prompt", type=int, default=128)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--slow-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    options: dict[str, Any] = dict(load_format=args.load_format, max_num_batched_tokens=8192)
    if args.draft != "none":
        options.update(draft_model=args.draft, spec_synthetic_acceptance=args.synthetic_acceptance)
    llm = LLM(args.model, **options)
    prompts = throughput_requests(args.requests, args.min_prompt, args.max_prompt, llm.engine.arch.vocab_size)
    records = serve_one_at_a_time(llm, prompts, args.output_len)
    slow = [r for r in records if r.milliseconds > args.slow_ms]
    total = sum(r.milliseconds for r in records)
    print(f"{len(records)} steps, {total / 1e3:.2f} s; {len(slow)} over {args.slow_ms:g} ms "
          f"({sum(r.milliseconds for r in slow) / 1e3:.2f} s); kernels compiled: "
          f"{sum(len(r.compiled) for r in records)}")
    for record in slow:
        collecting = f", {record.collecting_ms:.0f} ms collecting garbage" if record.collecting_ms else ""
        print(f"{record.milliseconds:8.1f} ms  launched (seqs, span, K, draft lag): {record.launched}{collecting}")
        for name in record.compiled:
            print(f"           compiled {name}")
    speculation = llm.engine.scheduler.speculation
    if speculation is not None and speculation.config.enabled:
        periods = speculation.step_seconds(1)
        print("step periods at one request by K: "
              + ", ".join(f"{k}: {seconds * 1e3:.2f} ms" for k, seconds in sorted(periods.items())))


if __name__ == "__main__":
    main()
