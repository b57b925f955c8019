"""The benchmark suite's Helix parts on CPU with a tiny model: the offline
measurements, a served sweep through `helix serve` and the load client, and
the target checks and RESULTS.md built from results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.suite import helix_offline, report, served
from benchmarks.suite.__main__ import _continued
from tests.tiny_models import VOCAB_SIZE

CPU = {"load_format": "auto", "dtype": "float32", "device": "cpu", "num_kv_blocks": 256, "block_size": 4}


def test_decode_rate_and_throughput_on_a_tiny_model(tiny_model_dirs: dict[str, Path]) -> None:
    model = str(tiny_model_dirs["llama"])
    decode = helix_offline.decode_rate(model, CPU, prompt_len=16, new_tokens=12, repeats=1)
    assert decode["decode_tok_s"] > 0 and decode["end_to_end_tok_s"] > 0 and decode["prefill_ms"] > 0
    spec = helix_offline.decode_rate(model, {**CPU, "draft_model": model, "spec_synthetic_acceptance": 1.0,
                                             "speculation_mode": "fixed", "num_speculative_tokens": 3},
                                     prompt_len=16, new_tokens=12, repeats=1)
    assert spec["mean_accepted_length"] > 3.0  # every draft accepted: K + 1 tokens per verify, but the last ones
    assert spec["policy"].get("spec_steps_k_3", 0) > 0 and decode["policy"] == {}
    prompts = helix_offline.throughput_requests(6, 8, 20, VOCAB_SIZE)
    assert all(8 <= len(p) <= 20 for p in prompts)
    throughput = helix_offline.offline_throughput(model, CPU, prompts, new_tokens=10)
    assert throughput["output_tokens"] == 60 and throughput["output_tok_s"] > 0


def test_served_sweep_runs_the_load_client_against_helix_serve(tiny_model_dirs: dict[str, Path]) -> None:
    flags = ["--model", str(tiny_model_dirs["llama"]), "--device", "cpu", "--num-kv-blocks", "256",
             "--block-size", "4", "--log-interval", "0"]
    prompts = helix_offline.throughput_requests(10, 8, 24, VOCAB_SIZE)
    warmup = helix_offline.throughput_requests(6, 8, 24, VOCAB_SIZE, seed=1)
    result = served.sweep(flags, [2.0, math.inf], prompts, output_len=8, seconds_per_rate=1.0,
                          warmup_prompts=warmup)
    assert result["warmup"]["completed"] == 6  # untimed, before the rates
    low, saturated = result["runs"]
    assert low["request_rate"] == 2.0 and low["completed"] == 8  # at least 8 prompts per rate
    assert saturated["request_rate"] == "inf" and saturated["completed"] == 10  # saturation sends them all
    assert saturated["total_input_tokens"] == sum(map(len, prompts))
    assert saturated["total_output_tokens"] == 10 * 8 and saturated["output_throughput"] > 0
    assert "--request-rate inf" in saturated["command"] and "prompts.jsonl" in saturated["command"]
    assert "itls" not in saturated and "median_itl_ms" in saturated  # summaries kept, per-request arrays not


def _results() -> dict[str, Any]:
    def run(rate: Any, tpot: float, throughput: float) -> dict[str, Any]:
        return {"request_rate": rate, "completed": 10, "output_throughput": throughput, "median_ttft_ms": 20.0,
                "p99_ttft_ms": 40.0, "median_tpot_ms": tpot, "p99_tpot_ms": 2 * tpot, "command": "load"}

    decode_a = {"model": "a", "roofline_tok_s": 1000.0, "bytes_per_step": 1,
                "helix": {"decode_tok_s": 700.0, "end_to_end_tok_s": 650.0},
                "hf_eager": {"decode_tok_s": 50.0}, "hf_compiled": {"error": "RuntimeError: no compiler"}}
    spec_a = {"target": "a", "draft": "d", "runs": [
        {"mode": "adaptive", "k": 8, "acceptance": 0.7, "decode_tok_s": 1500.0, "mean_accepted_length": 3.1,
         "rounds_past_stop_per_generation": 0.25,
         "policy": {"spec_steps_k_4": 70, "spec_steps_k_5": 12, "spec_step_seconds_class_1_k_4": 0.0024}},
        {"mode": "fixed", "k": 4, "acceptance": 0.5, "decode_tok_s": 1200.0, "mean_accepted_length": 1.9}]}
    return {
        "card": "Card", "copy_bandwidth_gb_s": 4000.0, "date": "2026-01-01 00:00 UTC", "commit": "abc",
        "torch": "2", "cuda": "13", "transformers": "5", "python": "3.12", "command": "python -m benchmarks.suite",
        "wall_seconds": 120.0,
        "decode": {"A": decode_a}, "spec": {"A": spec_a},
        "throughput": {"model": "a", "options": {}, "helix": {"output_tok_s": 9000.0, "seconds": 7.0,
                                                              "requests": 256, "prompt_tokens": 80000},
                       "helix_single_step": {"output_tok_s": 6000.0, "seconds": 10.5},
                       "hf_generate_batch": {"output_tok_s": 500.0, "seconds": 130.0}},
        "served": {"plain": {"server_command": "helix serve", "runs": [run(1.0, 4.0, 250.0), run("inf", 9.0, 8500.0)],
                             "warmup": {"completed": 256, "output_throughput": 7000.0, "median_ttft_ms": 300.0,
                                        "median_tpot_ms": 8.0}},
                   "speculative": {"server_command": "helix serve --draft", "runs": [
                       {**run(1.0, 2.0, 250.0), "server_metrics": {
                           "counter_deltas": {"helix:spec_decode_steps_total{k=0}": 12.0,
                                              "helix:spec_decode_steps_total{k=4}": 300.0,
                                              "helix:generation_tokens_total": 4096.0},
                           "gauges": {"helix:spec_decode_step_seconds{batch_class=1,k=0}": 0.00126,
                                      "helix:spec_decode_step_seconds{batch_class=1,k=4}": 0.0024}}},
                       run("inf", 10.0, 7990.0)]}},
    }


def test_target_checks_compare_each_measurement_with_its_goal() -> None:
    checks = {c["goal"]: c for c in report.target_checks(_results())}
    decode = checks["(a) target A batch-1 decode / roofline"]
    assert math.isclose(decode["ratio"], 0.7) and decode["met"]
    spec = checks["(b) target A speculative (adaptive K=8, a=0.7) / plain"]
    assert math.isclose(spec["ratio"], 1500 / 700) and spec["met"]
    assert not any(goal.startswith("(b)") and "a=0.5" in goal for goal in checks)  # goals are at a = 0.7
    throughput = checks["(c) 256-request throughput / transformers generate_batch"]
    assert math.isclose(throughput["ratio"], 18.0) and throughput["met"]
    saturation = checks["(d) served at saturation / offline throughput"]
    assert math.isclose(saturation["ratio"], 8500 / 9000) and saturation["met"]
    at_one = checks["(d) served speculative / plain at 1.0 req/s"]
    assert math.isclose(at_one["ratio"], 2.0) and at_one["met"]  # per stream: TPOT 4 ms -> 2 ms
    saturated = checks["(d) served speculative / plain at inf req/s"]
    assert math.isclose(saturated["ratio"], 7990 / 8500) and not saturated["met"]  # 0.94 < 0.95
    assert "target B" not in " ".join(checks)  # nothing measured, nothing claimed


def test_results_markdown_names_card_commit_and_commands() -> None:
    results = _results()
    results["targets"] = report.target_checks(results)
    text = report.markdown(results, Path("results/run.json"))
    for fragment in ("Card", "commit abc", "`python -m benchmarks.suite`", "| A: a | 1000 | 700 | 70% |",
                     "failed: RuntimeError: no compiler", "| transformers generate_batch | 500 |",
                     "| Helix, num_scheduler_steps=1 | 6000 |",
                     "- rate 1.0: steps run at K=0: 12, K=4: 300; the policy's step-period estimates: class 1 K=0: "
                     "1.26 ms, class 1 K=4: 2.40 ms",
                     "`helix serve --draft`", "Load command (per rate): `load`", "| no |",
                     "Before the rates, untimed: 256 other prompts at once (7000 tok/s, TTFT p50 300 ms",
                     "- A adaptive, a = 0.7: steps run at K=4: 70, K=5: 12",
                     "| A: a + d | adaptive K=8 | 0.7 | 1500 | 3.10 | 0.2 |",
                     "| A: a + d | fixed K=4 | 0.5 | 1200 | 1.90 | n/a |"):
        assert fragment in text, fragment


def test_a_continued_run_keeps_the_earlier_sections_and_both_commands(tmp_path: Path) -> None:
    earlier = {"card": "H200", "commit": "abc1234", "command": "python -m benchmarks.suite --sections decode",
               "wall_seconds": 300.0, "decode": {"A": {"helix": {"decode_tok_s": 700.0}}}}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    current = {"card": "H200", "commit": "abc1234", "command": "python -m benchmarks.suite --sections served"}
    results, seconds = _continued(current, path)
    assert results["decode"] == earlier["decode"] and seconds == 300.0
    assert results["command"] == f"{earlier['command']}, then {current['command']}"
    with pytest.raises(SystemExit, match="commit"):
        _continued({**current, "commit": "def5678"}, path)
