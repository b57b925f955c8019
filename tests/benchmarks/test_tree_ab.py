"""benchmarks/tree_ab.py: the alternating plan, the table, and that each run
measures its own tree's code (fake trees whose decode_rate returns what the
test chose)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tree_ab import Run, measure, plan, run_in_tree, table

_FAKE_OFFLINE = """
def decode_rate(target, options, prompt_len, new_tokens, repeats):
    if {fail}:
        raise ValueError("this tree cannot decode")
    # What the run was given, read back from the numbers it returns.
    settings = options["max_num_seqs"] * 1e6 + options["num_scheduler_steps"] * 1e3 + prompt_len + new_tokens / 1e4
    return {{"decode_tok_s": {rate} + repeats, "ms_per_token": settings,
             "mean_accepted_length": float(options.get("num_speculative_tokens", 0)) + (target == "llama-3-8b") / 10}}
"""


def fake_tree(root: Path, name: str, rate: float, fail: bool = False) -> Path:
    tree = root / name
    (tree / "benchmarks" / "suite").mkdir(parents=True)
    (tree / "benchmarks" / "__init__.py").write_text("")
    (tree / "benchmarks" / "suite" / "__init__.py").write_text("")
    (tree / "benchmarks" / "suite" / "helix_offline.py").write_text(_FAKE_OFFLINE.format(rate=rate, fail=fail))
    return tree


def test_trees_take_turns_on_each_case_in_every_alternation() -> None:
    assert plan(["old", "new"], ["A:plain", "A:fixed4"], 2) == [
        Run(0, "old", "A:plain"), Run(0, "new", "A:plain"), Run(0, "old", "A:fixed4"), Run(0, "new", "A:fixed4"),
        Run(1, "old", "A:plain"), Run(1, "new", "A:plain"), Run(1, "old", "A:fixed4"), Run(1, "new", "A:fixed4")]


def test_table_gives_each_trees_median_and_its_ratio_to_the_first_tree() -> None:
    rates = {Run(0, "old", "A:plain"): 100.0, Run(1, "old", "A:plain"): 110.0, Run(2, "old", "A:plain"): 90.0,
             Run(0, "new", "A:plain"): 120.0, Run(1, "new", "A:plain"): 125.0, Run(2, "new", "A:plain"): 500.0}
    lines = table(["old", "new"], ["A:plain"], rates).splitlines()
    assert lines[0] == "| case | tree | run 1 | run 2 | run 3 | median | ratio |"
    assert lines[2] == "| A:plain | old | 100.0 | 110.0 | 90.0 | 100.0 | 1.000 |"
    assert lines[3] == "| A:plain | new | 120.0 | 125.0 | 500.0 | 125.0 | 1.250 |"


def test_each_run_measures_its_own_tree(tmp_path: Path) -> None:
    old, new = fake_tree(tmp_path, "old", 100.0), fake_tree(tmp_path, "new", 200.0)
    results = measure({"old": old, "new": new}, ["A:fixed4", "B:plain"], 1, repeats=3)
    assert results[Run(0, "old", "A:fixed4")]["decode_tok_s"] == 103.0
    assert results[Run(0, "new", "A:fixed4")]["decode_tok_s"] == 203.0
    assert results[Run(0, "new", "A:fixed4")]["mean_accepted_length"] == 4.0  # the case's options reached the tree
    assert results[Run(0, "old", "B:plain")]["mean_accepted_length"] == pytest.approx(0.1)


def test_a_run_is_the_suites_batch_1_decode_rate(tmp_path: Path) -> None:
    """Batch 1, 8 scheduler steps, prompt 128, 256 new tokens; B's target; K = 4."""
    result = run_in_tree(fake_tree(tmp_path, "only", 1.0), "B:fixed4", 2)
    assert result["decode_tok_s"] == 3.0
    assert result["ms_per_token"] == pytest.approx(1e6 + 8e3 + 128 + 0.0256)
    assert result["mean_accepted_length"] == pytest.approx(4.1)


def test_a_tree_that_fails_names_the_case_and_shows_its_error(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path, "broken", 1.0, fail=True)
    with pytest.raises(RuntimeError, match=r"(?s)A:plain in .*broken.*this tree cannot decode"):
        run_in_tree(tree, "A:plain", 1)
