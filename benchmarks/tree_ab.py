"""Same-machine A/B of source trees: batch-1 decode rates, trees alternating.

Each tree is a directory holding a Helix checkout (for example one
`git archive` of each revision, unpacked). Every (tree, case) runs in a
fresh Python process whose working directory and import path are that
tree, so each measures its own code; the trees take turns case by case, and
the whole plan repeats `--alternations` times, so a drift of the machine
lands on every tree alike. A run is the suite's (a)/(b) figure:
`helix_offline.decode_rate` at prompt 128, 256 new tokens, batch 1,
`num_scheduler_steps=8`, speculation at the synthetic acceptance 0.7.

    PYTHONPATH=. python3 -m benchmarks.tree_ab --tree before=/tmp/old --tree after=/tmp/new
        [--case A:plain --case A:fixed4 ...] [--alternations 2] [--repeats 3] [--json results.json]

Prints every run as it ends, then a table: each tree's decode tok/s per
alternation, their median, and its ratio to the first tree's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from benchmarks.suite.__main__ import TARGETS

_SPECULATION: dict[str, dict[str, Any] | None] = {  # the (a) and (b) settings; None: plain decoding
    "plain": None,
    "fixed4": dict(num_speculative_tokens=4, speculation_mode="fixed"),
    "adaptive8": dict(num_speculative_tokens=8, speculation_mode="adaptive"),
}
# "A:fixed4" etc.: (target, engine options beyond BATCH_1), for the suite's targets and drafts.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    f"{name}:{label}": (target, {} if spec is None else dict(spec, draft_model=draft, spec_synthetic_acceptance=0.7))
    for name, (target, draft) in TARGETS.items() for label, spec in _SPECULATION.items()}
BATCH_1: dict[str, Any] = dict(max_num_seqs=1, num_kv_blocks=256, num_scheduler_steps=8)
PROMPT_LEN, NEW_TOKENS = 128, 256

# Run inside the tree's own process: its decode_rate on the case, one JSON line out.
_CHILD = """
import json, sys
from benchmarks.suite import helix_offline
target, options, prompt_len, new_tokens, repeats = json.loads(sys.argv[1])
rate = helix_offline.decode_rate(target, options, prompt_len, new_tokens, repeats)
print("TREE_AB " + json.dumps({key: rate[key] for key in ("decode_tok_s", "ms_per_token", "mean_accepted_length")}))
"""


@dataclass(frozen=True)
class Run:
    alternation: int
    tree: str
    case: str


def plan(trees: list[str], cases: list[str], alternations: int) -> list[Run]:
    """Every case of every tree once per alternation; within an alternation the
    trees take turns on each case, the first tree first."""
    return [Run(alternation, tree, case) for alternation in range(alternations) for case in cases for tree in trees]


def run_in_tree(directory: Path, case: str, repeats: int) -> dict[str, float]:
    """The case's decode rate measured by the tree at `directory`, in a fresh process."""
    target, options = CASES[case]
    payload = json.dumps([target, {**BATCH_1, **options}, PROMPT_LEN, NEW_TOKENS, repeats])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _CHILD, payload], cwd=directory, env=env, capture_output=True,
                          text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("TREE_AB ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{case} in {directory} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("TREE_AB "))


def table(trees: list[str], cases: list[str], rates: dict[Run, float]) -> str:
    """Markdown: decode tok/s per case and tree, each alternation, the median, and
    the median's ratio to the first tree's."""
    alternations = 1 + max(run.alternation for run in rates)
    lines = ["| case | tree | " + " | ".join(f"run {i + 1}" for i in range(alternations)) + " | median | ratio |",
             "| --- | --- |" + " --- |" * (alternations + 2)]
    for case in cases:
        medians = {tree: statistics.median(rates[Run(i, tree, case)] for i in range(alternations)) for tree in trees}
        for tree in trees:
            runs = " | ".join(f"{rates[Run(i, tree, case)]:.1f}" for i in range(alternations))
            ratio = medians[tree] / medians[trees[0]]
            lines.append(f"| {case} | {tree} | {runs} | {medians[tree]:.1f} | {ratio:.3f} |")
    return "\n".join(lines)


def measure(trees: dict[str, Path], cases: list[str], alternations: int, repeats: int,
            run: Callable[[Path, str, int], dict[str, float]] = run_in_tree) -> dict[Run, dict[str, float]]:
    """Every run of the plan, printed as it ends."""
    results = {}
    for step in plan(list(trees), cases, alternations):
        result = run(trees[step.tree], step.case, repeats)
        results[step] = result
        print(f"run {step.alternation + 1} {step.tree} {step.case}: {result['decode_tok_s']:.1f} tok/s, "
              f"{result['mean_accepted_length']:.2f} tokens a verify", flush=True)
    return results


def _named_tree(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not Path(directory).is_dir():
        raise argparse.ArgumentTypeError(f"expected NAME=DIRECTORY of a tree, got {text!r}")
    return name, Path(directory).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=_named_tree, action="append", required=True, help="NAME=DIRECTORY, 2 or more")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: A:plain A:fixed4")
    parser.add_argument("--alternations", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="generations per rate (their median)")
    parser.add_argument("--json", type=Path, help="write every run's result here")
    args = parser.parse_args()
    trees = dict(args.tree)
    if len(trees) < 2:
        parser.error("--tree: name at least two trees")
    cases = args.case or ["A:plain", "A:fixed4"]
    results = measure(trees, cases, args.alternations, args.repeats)
    print(table(list(trees), cases, {run: result["decode_tok_s"] for run, result in results.items()}))
    if args.json:
        args.json.write_text(json.dumps([{**vars(run), **result} for run, result in results.items()], indent=1))


if __name__ == "__main__":
    main()
