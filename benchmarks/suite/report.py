"""The suite's results as target checks and as benchmarks/RESULTS.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# Goals of the GPU-speed work: (name, goal ratio).
DECODE_GOALS = {"A": 0.60, "B": 0.80}       # of the roofline
SPEC_GOAL = 2.0                             # x plain batch-1 decode at a = 0.7
THROUGHPUT_GOAL = 15.0                      # x transformers' generate_batch
SERVED_SATURATION_GOAL = 0.90               # x offline throughput
SERVED_SPEC_FLOOR, SERVED_SPEC_AT_1 = 0.95, 1.8


def _ok(section: Any) -> bool:
    return isinstance(section, dict) and "error" not in section


def target_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal: what was measured, the ratio, the goal, and whether it is met."""
    checks: list[dict[str, Any]] = []

    def check(goal: str, ratio: float | None, target: float, detail: str) -> None:
        met = ratio is not None and ratio >= target
        checks.append({"goal": goal, "ratio": ratio, "target": target, "met": met, "detail": detail})

    decode = results.get("decode", {})
    for name, goal in DECODE_GOALS.items():
        entry = decode.get(name) if _ok(decode) else None
        if entry:
            rate, roof = entry["helix"]["decode_tok_s"], entry["roofline_tok_s"]
            check(f"(a) target {name} batch-1 decode / roofline", rate / roof, goal,
                  f"{rate:.0f} of {roof:.0f} tok/s")
    spec = results.get("spec", {})
    for name in DECODE_GOALS:
        plain = decode.get(name, {}).get("helix") if _ok(decode) else None
        if not (_ok(spec) and name in spec and plain):
            continue
        for run in spec[name]["runs"]:
            if run["acceptance"] == 0.7 and run.get("num_scheduler_steps") != 1:  # not the single-step baseline
                ratio = run["decode_tok_s"] / plain["decode_tok_s"]
                check(f"(b) target {name} speculative ({run['mode']} K={run['k']}, a=0.7) / plain", ratio,
                      SPEC_GOAL, f"{run['decode_tok_s']:.0f} vs {plain['decode_tok_s']:.0f} tok/s")
    throughput = results.get("throughput", {})
    if _ok(throughput) and _ok(throughput.get("hf_generate_batch")):
        ours, theirs = throughput["helix"]["output_tok_s"], throughput["hf_generate_batch"]["output_tok_s"]
        check("(c) 256-request throughput / transformers generate_batch", ours / theirs, THROUGHPUT_GOAL,
              f"{ours:.0f} vs {theirs:.0f} tok/s")
    _served_checks(results, check)
    return checks


def _served_checks(results: dict[str, Any], check: Any) -> None:
    served, throughput = results.get("served", {}), results.get("throughput", {})
    if not (_ok(served) and _ok(served.get("plain")) and _ok(served.get("speculative"))):
        return
    plain = {run["request_rate"]: run for run in served["plain"]["runs"]}
    spec = {run["request_rate"]: run for run in served["speculative"]["runs"]}
    saturated = plain.get(math.inf) or plain.get("inf")
    if saturated and _ok(throughput):
        offline = throughput["helix"]["output_tok_s"]
        check("(d) served at saturation / offline throughput", saturated["output_throughput"] / offline,
              SERVED_SATURATION_GOAL, f"{saturated['output_throughput']:.0f} vs {offline:.0f} tok/s")
    for rate, plain_run in plain.items():
        spec_run = spec.get(rate)
        if spec_run is None:
            continue
        ratio = served_speedup(plain_run, spec_run)
        goal = SERVED_SPEC_AT_1 if rate == 1 else SERVED_SPEC_FLOOR
        check(f"(d) served speculative / plain at {rate} req/s", ratio, goal, _served_detail(plain_run, spec_run))


def served_speedup(plain: dict[str, Any], spec: dict[str, Any]) -> float:
    """Below saturation both serve the same tokens per second (the arrival rate
    sets it), so the speed-up is per stream: median TPOT, plain over speculative.
    At saturation it is output throughput."""
    if _is_saturating(plain):
        return spec["output_throughput"] / plain["output_throughput"]
    return plain["median_tpot_ms"] / spec["median_tpot_ms"]


def _is_saturating(run: dict[str, Any]) -> bool:
    return run["request_rate"] in (math.inf, "inf")


def _served_detail(plain: dict[str, Any], spec: dict[str, Any]) -> str:
    if _is_saturating(plain):
        return f"{spec['output_throughput']:.0f} vs {plain['output_throughput']:.0f} tok/s"
    return f"median TPOT {spec['median_tpot_ms']:.2f} vs {plain['median_tpot_ms']:.2f} ms"


def targets_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| goal | measured | ratio | target | met |", "| --- | --- | --- | --- | --- |"]
    for c in checks:
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(f"| {c['goal']} | {c['detail']} | {ratio} | {c['target']:.2f} | {'yes' if c['met'] else 'no'} |")
    return "\n".join(lines)


# -- RESULTS.md ---------------------------------------------------------------------------
def markdown(results: dict[str, Any], json_path: Path) -> str:
    parts = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks.suite` from its latest run; the numbers are in "
        f"[`{json_path}`]({json_path}). Models have random weights at real shapes (`load_format=\"dummy\"`, "
        "bf16). Speculative runs use the benchmark-only `spec_synthetic_acceptance`: a seeded coin of "
        "probability a decides acceptance while every draft and verify pass runs for real.",
        "",
        f"- Card: {results['card']} (device-to-device copy bandwidth {results['copy_bandwidth_gb_s']:.0f} GB/s, "
        "measured in the same run)",
        f"- Date: {results['date']}; commit {results['commit']}",
        f"- Software: torch {results['torch']} (CUDA {results['cuda']}), transformers {results['transformers']}, "
        f"Python {results['python']}",
        f"- Command: `{results['command']}` ({results['wall_seconds'] / 60:.1f} minutes)",
        "",
        "## Targets",
        "",
        targets_table(results["targets"]),
        "",
    ]
    parts += _decode_md(results.get("decode"))
    parts += _spec_md(results.get("spec"))
    parts += _throughput_md(results.get("throughput"))
    parts += _served_md(results.get("served"))
    return "\n".join(parts) + "\n"


def _failed(title: str, section: Any) -> list[str]:
    if section is None:
        return []
    return [f"## {title}", "", f"Failed: `{section['error']}`", ""]


def _decode_md(section: Any) -> list[str]:
    if not _ok(section):
        return _failed("(a) Batch-1 decode", section)
    lines = ["## (a) Batch-1 decode", "",
             "Prompt 128 tokens, 256 greedy new tokens (ignore_eos). Decode tok/s excludes the prefill: "
             "255 / (t(256 tokens) - t(1 token)). Roofline: copy bandwidth / bytes read per step (all weights "
             "plus the KV cache at the mean context).", "",
             "| target | roofline tok/s | Helix decode tok/s | % of roofline | Helix end-to-end tok/s | "
             "transformers eager | transformers compiled (static cache) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in section.items():
        helix = entry["helix"]
        lines.append(f"| {name}: {entry['model']} | {entry['roofline_tok_s']:.0f} | {helix['decode_tok_s']:.0f} | "
                     f"{100 * helix['decode_tok_s'] / entry['roofline_tok_s']:.0f}% | "
                     f"{helix['end_to_end_tok_s']:.0f} | {_hf_rate(entry.get('hf_eager'))} | "
                     f"{_hf_rate(entry.get('hf_compiled'))} |")
    single = [f"{name} {entry['helix_single_step']['decode_tok_s']:.0f} tok/s" for name, entry in section.items()
              if "helix_single_step" in entry]
    if single:
        lines += ["", "With num_scheduler_steps=1 (a host round trip per token), in the same run: "
                      f"{', '.join(single)}."]
    return lines + [""]


def _hf_rate(entry: Any) -> str:
    if entry is None:
        return "-"
    if not _ok(entry):
        return f"failed: {entry['error'][:60]}"
    return f"{entry['decode_tok_s']:.0f}"


def _past_stop(run: dict[str, Any]) -> str:
    """Chained rounds a generation ran after its last token (runs from before the count: n/a)."""
    value = run.get("rounds_past_stop_per_generation")
    return "n/a" if value is None else f"{value:.1f}"


def _spec_md(section: Any) -> list[str]:
    if not _ok(section):
        return _failed("(b) Batch-1 speculative decoding", section)
    lines = ["## (b) Batch-1 speculative decoding", "",
             "Same prompt and length as (a); decode tok/s excludes the prefill. Rounds past the last token: "
             "chained rounds a generation ran after its request had all its tokens (their tokens are dropped), "
             "per generation.", "",
             "| target + draft | mode | a | decode tok/s | tokens per verify | rounds past the last token |",
             "| --- | --- | --- | --- | --- | --- |"]
    adaptive = []
    for name, entry in section.items():
        for run in entry["runs"]:
            steps_note = ", num_scheduler_steps=1" if run.get("num_scheduler_steps") == 1 else ""
            lines.append(f"| {name}: {entry['target']} + {entry['draft']} | {run['mode']} K={run['k']}{steps_note} | "
                         f"{run['acceptance']} | {run['decode_tok_s']:.0f} | {run['mean_accepted_length']:.2f} | "
                         f"{_past_stop(run)} |")
            steps = {int(key.removeprefix("spec_steps_k_")): count for key, count in run.get("policy", {}).items()
                     if key.startswith("spec_steps_k_")}
            if run["mode"] == "adaptive" and steps:
                by_k = ", ".join(f"K={k}: {count}" for k, count in sorted(steps.items()))
                adaptive.append(f"- {name} adaptive, a = {run['acceptance']}: steps run at {by_k}")
    return lines + [""] + (adaptive + [""] if adaptive else [])


def _throughput_md(section: Any) -> list[str]:
    if not _ok(section):
        return _failed("(c) Offline throughput", section)
    helix = section["helix"]
    lines = ["## (c) Offline throughput", "",
             f"{helix['requests']} requests, prompts uniform in 128-512 tokens ({helix['prompt_tokens']} in all), "
             f"256 output tokens each, {section['model']}, one `LLM.generate` call "
             f"(options {section['options']}).", "",
             "| engine | output tok/s | seconds |", "| --- | --- | --- |",
             f"| Helix | {helix['output_tok_s']:.0f} | {helix['seconds']:.1f} |"]
    single = section.get("helix_single_step")
    if single is not None:
        lines.append(f"| Helix, num_scheduler_steps=1 | {single['output_tok_s']:.0f} | {single['seconds']:.1f} |")
    hf = section.get("hf_generate_batch")
    if _ok(hf):
        lines.append(f"| transformers generate_batch | {hf['output_tok_s']:.0f} | {hf['seconds']:.1f} |")
    elif hf is not None:
        lines.append(f"| transformers generate_batch | failed: {hf['error'][:80]} | - |")
    return lines + [""]


def _served_md(section: Any) -> list[str]:
    if not _ok(section):
        return _failed("(d) Served", section)
    lines = ["## (d) Served", "",
             "The load client against `helix serve` (prompts 128-512 tokens, 256 output tokens, streamed).", ""]
    for key, sweep in section.items():
        if not _ok(sweep):
            lines += [f"{key}: failed: `{sweep['error']}`", ""]
            continue
        lines += [f"{key}: `{sweep['server_command']}`", ""]
        warmup = sweep.get("warmup")
        if warmup:
            lines += [f"Before the rates, untimed: {warmup['completed']} other prompts at once "
                      f"({warmup['output_throughput']:.0f} tok/s, TTFT p50 {warmup['median_ttft_ms']:.0f} ms, "
                      f"TPOT p50 {warmup['median_tpot_ms']:.2f} ms).", ""]
        lines += ["| rate req/s | requests | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms |",
                  "| --- | --- | --- | --- | --- |"]
        for run in sweep["runs"]:
            lines.append(f"| {run['request_rate']} | {run['completed']} | {run['output_throughput']:.0f} | "
                         f"{run['median_ttft_ms']:.0f} / {run['p99_ttft_ms']:.0f} | "
                         f"{run['median_tpot_ms']:.2f} / {run['p99_tpot_ms']:.2f} |")
        lines += [""] + _policy_lines(sweep["runs"])
        lines += [f"Load command (per rate): `{sweep['runs'][0]['command']}`", ""]
    return lines


def _policy_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Per rate, the steps the speculation policy ran at each K during the run and
    its step-period estimates after it (from the server's metrics); none without speculation."""
    lines = []
    for run in runs:
        metrics = run.get("server_metrics") or {}
        steps = {_label(key, "k"): count for key, count in metrics.get("counter_deltas", {}).items()
                 if key.startswith("helix:spec_decode_steps_total") and count}
        estimates = {(_label(key, "batch_class"), _label(key, "k")): seconds
                     for key, seconds in metrics.get("gauges", {}).items()
                     if key.startswith("helix:spec_decode_step_seconds")}
        if not steps and not estimates:
            continue
        by_k = ", ".join(f"K={k}: {count:.0f}" for k, count in sorted(steps.items()))
        periods = ", ".join(f"class {c} K={k}: {seconds * 1e3:.2f} ms" for (c, k), seconds in sorted(estimates.items()))
        lines += [f"- rate {run['request_rate']}: steps run at {by_k or '-'}; the policy's step-period estimates: "
                  f"{periods or '-'}"]
    return lines + [""] if lines else []


def _label(key: str, name: str) -> int:
    """The integer label `name` of a sample key `metric{a=1,b=2}`."""
    labels = dict(pair.split("=", 1) for pair in key[key.index("{") + 1:-1].split(","))
    return int(labels[name])
