"""`python -m benchmarks.suite`: every GPU benchmark in one run, on one card.

Writes benchmarks/results/<date>-<card>-<commit>.json and rewrites
benchmarks/RESULTS.md from it. Sections (all by default):

- decode: batch-1 decode of targets A (TinyLlama-1.1B shape) and B
  (Llama-3-8B shape) against the roofline measured in the same run and
  against transformers' `generate`, eager and compiled with a static cache;
  with `num_scheduler_steps` as given and, as a baseline, 1;
- spec: batch-1 speculative decoding (drafts: a 68M Llama, Llama-3.2-1B
  shapes), K adaptive and K = 4, synthetic acceptance a in {0.5, 0.7, 0.9},
  with the same `num_scheduler_steps` (chained rounds), and fixed K = 4 at
  a = 0.7 with 1 as a baseline;
- throughput: 256 requests (prompts 128-512 tokens, 256 outputs) through
  `LLM.generate` against transformers' continuous batching (`generate_batch`),
  with `num_scheduler_steps` as given and, as a baseline in the same run, 1;
- served: the load client against `helix serve` (A + draft A, a = 0.7) from
  1 request/s to saturation, with and without speculation (K adaptive up to
  the spec section's K_max), with the same `num_scheduler_steps`; each server first gets an untimed burst of as many
  other prompts (`--no-served-warmup` leaves it out).

Models have dummy weights at real shapes, so speculative results use
`spec_synthetic_acceptance` (reported as such).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import transformers

from benchmarks.suite import helix_offline, hf_baselines, report, roofline, served
from helix.worker.models.presets import PRESETS

TARGETS = {"A": ("tinyllama-1.1b", "llama-68m"), "B": ("llama-3-8b", "llama-3.2-1b")}
ACCEPTANCE_RATES = (0.5, 0.7, 0.9)
SPEC_MODES = (("adaptive", 8), ("fixed", 4))  # (speculation_mode, num_speculative_tokens)
SECTIONS = ("decode", "spec", "throughput", "served")
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
RESULTS_MD = Path(__file__).resolve().parents[1] / "RESULTS.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--rates", default="1,4,inf", help="Served request rates (requests/s; inf saturates).")
    parser.add_argument("--num-scheduler-steps", type=int, default=8,
                        help="Multi-step decoding, and chained speculative rounds, in every section (the "
                             "engine's `num_scheduler_steps`); each section also runs 1 as a baseline.")
    parser.add_argument("--served-warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="Before the served sweep, send as many other prompts at once, untimed, to each "
                             "server (default: on).")
    parser.add_argument("--skip-hf", action="store_true", help="Leave out the transformers baselines.")
    parser.add_argument("--in-process", action="store_true",
                        help="Serve with `helix serve --no-engine-process` (engine core and HTTP server in one "
                             "process).")
    parser.add_argument("--continue-from", type=Path, metavar="JSON",
                        help="Add this run's sections to an earlier run's results (same card and commit), "
                             "so a suite longer than one sitting can run in parts.")
    parser.add_argument("--no-markdown", action="store_true", help="Write the JSON only, not RESULTS.md.")
    parser.add_argument("--commit", help="Commit of the code under test (default: from git; give it where the "
                                         "checkout's git metadata is missing or stale).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    started = time.perf_counter()
    results: dict[str, Any] = _environment(argv, args.commit)
    earlier_seconds = 0.0
    if args.continue_from is not None:
        results, earlier_seconds = _continued(results, args.continue_from)
    bandwidth = roofline.copy_bandwidth_bytes_per_s(torch.device("cuda"))
    results.setdefault("copy_bandwidth_gb_s", bandwidth / 1e9)  # the decode section's roofline used the first
    _log(f"{results['card']}: copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    runners: dict[str, Callable[[argparse.Namespace, float], Any]] = {
        "decode": run_decode, "spec": run_spec, "throughput": run_throughput, "served": run_served}
    for section in args.sections:
        section_started = time.perf_counter()
        results[section] = _guarded(section, functools.partial(runners[section], args, bandwidth))
        _log(f"{section}: {time.perf_counter() - section_started:.0f} s")
        results["wall_seconds"] = earlier_seconds + time.perf_counter() - started
        results["targets"] = report.target_checks(results)
        # After every section: a run cut short keeps what it measured.
        path = _write_json(results)
        if not args.no_markdown:
            RESULTS_MD.write_text(report.markdown(results, path.relative_to(RESULTS_MD.parent)))
    _log(f"wrote {path}" + ("" if args.no_markdown else f" and {RESULTS_MD}"))
    print(report.targets_table(results["targets"]))
    return 0


# -- sections ---------------------------------------------------------------------------
def run_decode(args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for name in args.targets:
        model = TARGETS[name][0]
        config = PRESETS[model]
        context = args.prompt_len + args.new_tokens // 2  # mean context over the decode
        step_bytes = roofline.decode_bytes_per_step(config, 2, context)
        entry: dict[str, Any] = {"model": model, "roofline_tok_s": roofline.roofline_tokens_per_s(bandwidth,
                                                                                                  step_bytes),
                                 "bytes_per_step": step_bytes}
        options = dict(max_num_seqs=1, num_kv_blocks=256, num_scheduler_steps=args.num_scheduler_steps)
        runs = [("helix", options)] + ([("helix_single_step", {**options, "num_scheduler_steps": 1})]
                                       if args.num_scheduler_steps > 1 else [])
        for key, run_options in runs:
            entry[key] = helix_offline.decode_rate(model, run_options, args.prompt_len, args.new_tokens,
                                                   args.repeats)
            helix_offline.release_cuda()
        _log(f"decode {name}: helix {entry['helix']['decode_tok_s']:.0f} tok/s, "
             f"roofline {entry['roofline_tok_s']:.0f}")
        section[name] = entry
    if not args.skip_hf:  # after every Helix target: transformers' compiled graphs stay out of Helix's timings
        for name in args.targets:
            section[name].update(_hf_decode(PRESETS[TARGETS[name][0]], args))
    return section


def _hf_decode(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    model = hf_baselines.build_hf_model(config, torch.bfloat16, torch.device("cuda"))
    entry = {}
    for key, compiled in (("hf_eager", False), ("hf_compiled", True)):
        measure = functools.partial(hf_baselines.hf_decode_tokens_per_s, model, prompt_len=args.prompt_len,
                                    new_tokens=args.new_tokens, compiled=compiled)
        entry[key] = _guarded(key, measure)
        _log(f"  {key}: {entry[key]}")
    del model, measure
    torch._dynamo.reset()  # drop compiled graphs and their memory pools
    helix_offline.release_cuda()
    return entry


def run_spec(args: argparse.Namespace, _bandwidth: float) -> dict[str, Any]:
    section: dict[str, Any] = {}
    for name in args.targets:
        target, draft = TARGETS[name]
        rows = []
        # The last run: fixed K at a = 0.7 without chained rounds, as their baseline in the same run.
        plans = [(mode, k, rate, args.num_scheduler_steps) for mode, k in SPEC_MODES for rate in ACCEPTANCE_RATES]
        if args.num_scheduler_steps > 1:
            plans.append(("fixed", SPEC_MODES[-1][1], 0.7, 1))
        for mode, k, rate, num_steps in plans:
            options = dict(draft_model=draft, num_speculative_tokens=k, speculation_mode=mode,
                           spec_synthetic_acceptance=rate, max_num_seqs=1, num_kv_blocks=256,
                           num_scheduler_steps=num_steps)
            row = {"mode": mode, "k": k, "acceptance": rate, "num_scheduler_steps": num_steps,
                   **helix_offline.decode_rate(target, options, args.prompt_len, args.new_tokens, args.repeats)}
            helix_offline.release_cuda()
            _log(f"spec {name} {mode} K={k} a={rate} num_scheduler_steps={num_steps}: "
                 f"{row['decode_tok_s']:.0f} tok/s, {row['mean_accepted_length']:.2f} tokens/verify")
            rows.append(row)
        section[name] = {"target": target, "draft": draft, "runs": rows}
    return section


def run_throughput(args: argparse.Namespace, _bandwidth: float) -> dict[str, Any]:
    model = TARGETS["A"][0]
    config = PRESETS[model]
    prompts = helix_offline.throughput_requests(args.num_requests, 128, 512, config["vocab_size"])
    options = dict(max_num_seqs=256, max_num_batched_tokens=8192, num_kv_blocks=16384,
                   num_scheduler_steps=args.num_scheduler_steps)
    section: dict[str, Any] = {"model": model, "options": options}
    runs = [("helix", options)] + ([("helix_single_step", {**options, "num_scheduler_steps": 1})]
                                   if args.num_scheduler_steps > 1 else [])
    for key, run_options in runs:
        section[key] = helix_offline.offline_throughput(model, run_options, prompts, args.new_tokens)
        helix_offline.release_cuda()
        _log(f"throughput: {key} {section[key]['output_tok_s']:.0f} tok/s")
    if not args.skip_hf:
        hf_model = hf_baselines.build_hf_model(config, torch.bfloat16, torch.device("cuda"))
        measure = functools.partial(hf_baselines.hf_generate_batch_throughput, hf_model, prompts,
                                    new_tokens=args.new_tokens)
        section["hf_generate_batch"] = _guarded("hf_generate_batch", measure)
        del hf_model, measure
        helix_offline.release_cuda()
        _log(f"  hf generate_batch: {section['hf_generate_batch']}")
    return section


def run_served(args: argparse.Namespace, _bandwidth: float) -> dict[str, Any]:
    target, draft = TARGETS["A"]
    rates = [float(r) for r in args.rates.split(",")]
    vocab = PRESETS[target]["vocab_size"]
    prompts = helix_offline.throughput_requests(args.num_requests, 128, 512, vocab)
    warmup = (helix_offline.throughput_requests(args.num_requests, 128, 512, vocab, seed=1)
              if args.served_warmup else None)
    common = ["--model", target, "--load-format", "dummy", "--dtype", "bfloat16", "--num-kv-blocks", "16384",
              "--max-num-batched-tokens", "8192", "--num-scheduler-steps", str(args.num_scheduler_steps),
              "--log-interval", "0"] + (
                  ["--no-engine-process"] if args.in_process else [])
    k_max = dict(SPEC_MODES)["adaptive"]
    spec = ["--draft-model", draft, "--num-speculative-tokens", str(k_max), "--benchmark-mode",
            "--spec-synthetic-acceptance", "0.7"]
    section = {}
    for key, flags in (("plain", common), ("speculative", common + spec)):
        section[key] = served.sweep(flags, rates, prompts, args.new_tokens, warmup_prompts=warmup)
        for run in section[key]["runs"]:
            _log(f"served {key} rate {run['request_rate']}: {run['output_throughput']:.0f} tok/s, "
                 f"TPOT p50 {run['median_tpot_ms']:.1f} ms")
    return section


# -- plumbing ---------------------------------------------------------------------------
def _guarded(name: str, run: Callable[[], Any]) -> Any:
    """A failing section is recorded, not fatal: the rest of the suite still runs."""
    try:
        return run()
    except Exception as error:  # noqa: BLE001 - reported in the results
        _log(f"{name} failed: {type(error).__name__}: {error}")
        traceback.print_exc()
        helix_offline.release_cuda()
        return {"error": f"{type(error).__name__}: {error}"}


def _environment(argv: list[str] | None, commit: str | None) -> dict[str, Any]:
    return {
        "card": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or _git_commit(),
        "command": " ".join(["python -m benchmarks.suite", *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


def _continued(current: dict[str, Any], earlier_path: Path) -> tuple[dict[str, Any], float]:
    """The earlier run's results, to which this run adds its sections (and its
    command), and the seconds it took."""
    earlier = json.loads(earlier_path.read_text())
    for key in ("card", "commit"):
        if earlier.get(key) != current[key]:
            raise SystemExit(f"--continue-from: that run's {key} is {earlier.get(key)!r}, this one's {current[key]!r}")
    return {**earlier, "command": f"{earlier['command']}, then {current['command']}"}, earlier["wall_seconds"]


def _git_commit() -> str:
    """HEAD's short hash, marked -dirty when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS_DIR.parent).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=RESULTS_DIR.parent).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def _write_json(results: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    card = results["card"].replace("NVIDIA ", "").replace(" ", "-")
    path = RESULTS_DIR / f"{results['date'][:10]}-{card}-{results['commit']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
