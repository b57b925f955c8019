"""The printed table, sweep file names and the JSON writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.load import cli, report
from benchmarks.load.client import RequestResult
from benchmarks.load.metrics import summarize
from benchmarks.load.runner import LoadSchedule


def result() -> dict:
    ok = RequestResult(success=True, prompt_len=4, output_tokens=3, ttft=0.01, latency=0.03, itl=[0.01, 0.01])
    summary = summarize([ok, RequestResult().fail("HTTP 503", "HTTP 503: busy")], 1.0, {"ttft": 100})
    return {"request_rate": "inf", "max_concurrency": 4, **summary,
            "server_metrics": {"preemptions": 2.0, "spec_acceptance_rate": 0.75}}


def test_summary_table() -> None:
    table = report.summary_table(result())
    lines = table.splitlines()
    assert lines[0] == "=" * 12 + " Serving Benchmark Result " + "=" * 12
    assert "Successful requests:                     1" in table
    assert "  HTTP 503:" in table and "Request goodput (req/s):" in table
    for title in ("Time to First Token", "Time per Output Token", "Inter-token Latency", "End-to-end Latency"):
        assert title in table
    assert "Mean TTFT (ms):                          10.00" in table
    assert "Speculative acceptance rate:             0.75" in table
    assert "Preemptions:                             2" in table
    assert "Cancelled" not in table  # only runs with disconnects show the row
    cancelled = report.summary_table({**result(), **summarize([RequestResult(cancelled=True)] * 3, 1.0)})
    assert "Cancelled by the client:                 3" in cancelled


def test_sweep_file_names() -> None:
    assert report.rate_path("out/run.json", 4.0) == Path("out/run_rate4.json")
    assert report.rate_path("run.json", 0.5) == Path("run_rate0.5.json")
    assert report.rate_path("run.json", math.inf) == Path("run_rateinf.json")
    assert "Sweep" in report.sweep_table([result(), {**result(), "request_rate": 2.0}])


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "out.json"
    report.write_json(result(), path)
    assert json.loads(path.read_text())["completed"] == 1


def test_argument_checks(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--base-url", "http://127.0.0.1:9"]
    args = cli.parse_args(base + ["--sweep", "1, 2.5,inf", "--goodput", "ttft:5", "tpot:1"])
    assert args.rates == [1.0, 2.5, math.inf] and args.slos == {"ttft": 5.0, "tpot": 1.0}
    for bad in (["--request-rate", "0"], ["--burstiness", "0"], ["--goodput", "itl:5"], ["--range-ratio", "1"],
                ["--duration", "5"], ["--dataset", "sharegpt"], ["--max-concurrency", "0"], ["--extra-body", "[1]"]):
        with pytest.raises(SystemExit):
            cli.parse_args(base + bad)
    assert "--duration with an infinite --request-rate needs --max-concurrency" in capsys.readouterr().err
    args = cli.parse_args(base + ["--disconnect-fraction", "0.25", "--disconnect-max-delay", "2", "--seed", "7"])
    assert cli.load_schedule(args, 1.0) == LoadSchedule(1.0, seed=7, disconnect_fraction=0.25,
                                                        disconnect_max_delay_s=2.0)
    for flag, value, message in [("--disconnect-fraction", "1", "--disconnect-fraction must be in [0, 1), got 1.0"),
                                 ("--disconnect-fraction", "-0.1", "must be in [0, 1), got -0.1"),
                                 ("--disconnect-fraction", "nan", "must be in [0, 1), got nan"),
                                 ("--disconnect-fraction", "half", "invalid float value: 'half'"),
                                 ("--disconnect-max-delay", "0", "--disconnect-max-delay must be a positive number"),
                                 ("--disconnect-max-delay", "inf", "positive number of seconds, got inf")]:
        with pytest.raises(SystemExit):
            cli.parse_args(base + [flag, value])
        assert message in capsys.readouterr().err
