"""Aggregation against hand-computed small examples."""

from __future__ import annotations

import math

import pytest

from benchmarks.load.client import RequestResult
from benchmarks.load.metrics import parse_slos, stats_ms, summarize


def ok(prompt: int, output: int, ttft: float, latency: float, itl: list[float]) -> RequestResult:
    return RequestResult(success=True, prompt_len=prompt, output_tokens=output, ttft=ttft, latency=latency,
                         itl=itl, generated_text="x" * output, usage_reported=True)


def failed(kind: str) -> RequestResult:
    return RequestResult(prompt_len=40).fail(kind, f"{kind}: went wrong")


# TTFT 100/200/300 ms; E2E 500/1200/300 ms; TPOT (500-100)/4 = 100 and (1200-200)/10 = 100 ms,
# none for the one-token request.
RESULTS = [
    ok(10, 5, 0.1, 0.5, [0.1, 0.1, 0.1, 0.1]),
    ok(20, 11, 0.2, 1.2, [0.05, 0.15, 0.8]),
    ok(30, 1, 0.3, 0.3, []),
    failed("HTTP 503"),
    failed("stream error"),
    failed("HTTP 503"),
]


def test_tpot() -> None:
    assert RESULTS[0].tpot == pytest.approx(0.1) and RESULTS[1].tpot == pytest.approx(0.1)
    assert RESULTS[2].tpot is None and RESULTS[3].tpot is None


def test_counts_totals_and_throughput() -> None:
    s = summarize(RESULTS, duration_s=2.0, peak_concurrency=4)
    assert (s["completed"], s["failed"]) == (3, 3)
    assert s["failed_reasons"] == {"HTTP 503": 2, "stream error": 1}
    assert s["total_input_tokens"] == 60  # completed requests only
    assert s["total_output_tokens"] == 17
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["output_throughput"] == pytest.approx(8.5)
    assert s["total_token_throughput"] == pytest.approx(38.5)
    assert s["peak_concurrency"] == 4
    assert s["request_goodput"] is None  # no SLOs given
    assert s["output_lens"] == [5, 11, 1, 0, 0, 0]
    assert s["input_lens"] == [10, 20, 30, 40, 40, 40]
    assert s["errors"][:3] == ["", "", ""] and s["errors"][3] == "HTTP 503: went wrong"


def test_cancelled_requests_are_neither_completed_nor_failed() -> None:
    abandoned = RequestResult(prompt_len=50, start=1.0).cancel()
    s = summarize([*RESULTS, abandoned, abandoned], duration_s=2.0)
    assert (s["completed"], s["failed"], s["cancelled"]) == (3, 3, 2)
    assert s["failed_reasons"] == {"HTTP 503": 2, "stream error": 1}
    plain = summarize(RESULTS, duration_s=2.0)
    assert plain["cancelled"] == 0
    for key in ("total_input_tokens", "total_output_tokens", "request_throughput", "mean_ttft_ms", "p99_itl_ms",
                "mean_tpot_ms", "median_e2el_ms"):
        assert s[key] == plain[key], key
    assert s["output_lens"][-2:] == [0, 0] and s["errors"][-2:] == ["", ""]


def test_latency_statistics() -> None:
    s = summarize(RESULTS, duration_s=2.0)
    assert s["mean_ttft_ms"] == pytest.approx(200.0)
    assert s["median_ttft_ms"] == pytest.approx(200.0)
    assert s["std_ttft_ms"] == pytest.approx(math.sqrt(20000 / 3))  # population std
    assert s["p90_ttft_ms"] == pytest.approx(280.0)  # linear: 200 + 0.8 * 100
    assert s["p99_ttft_ms"] == pytest.approx(298.0)
    assert s["mean_tpot_ms"] == pytest.approx(100.0) and s["std_tpot_ms"] == pytest.approx(0.0)
    assert s["mean_e2el_ms"] == pytest.approx(2000 / 3)
    assert s["median_e2el_ms"] == pytest.approx(500.0)
    assert s["p90_e2el_ms"] == pytest.approx(1060.0)  # sorted 300, 500, 1200: 500 + 0.8 * 700
    # ITL: every gap of completed requests, pooled: 100 x4, 50, 150, 800
    assert s["mean_itl_ms"] == pytest.approx(1400 / 7)
    assert s["median_itl_ms"] == pytest.approx(100.0)
    assert s["p99_itl_ms"] == pytest.approx(150 + 0.94 * 650)


@pytest.mark.parametrize("slos, good", [
    ({"ttft": 250}, 2),                  # the third request's TTFT is 300 ms
    ({"tpot": 99}, 1),                   # only the one-token request (TPOT counts as 0)
    ({"tpot": 100, "e2el": 600}, 2),     # the 1200 ms request misses
    ({"ttft": 250, "e2el": 400}, 0),
    ({"ttft": 300, "tpot": 100, "e2el": 1200}, 3),  # limits are inclusive
])
def test_goodput(slos: dict[str, float], good: int) -> None:
    assert summarize(RESULTS, duration_s=2.0, slos=slos)["request_goodput"] == pytest.approx(good / 2.0)


def test_nothing_completed() -> None:
    s = summarize([failed("ClientConnectorError")], duration_s=1.0, slos={"ttft": 1})
    assert s["completed"] == 0 and s["request_goodput"] == 0
    assert all(s[f"{stat}_{m}_ms"] == 0 for stat in ("mean", "median", "std", "p90", "p99")
               for m in ("ttft", "tpot", "itl", "e2el"))
    assert summarize([], duration_s=0.0)["request_throughput"] == 0


def test_stats_ms() -> None:
    assert stats_ms([0.001, 0.002, 0.003, 0.004]) == pytest.approx(
        {"mean": 2.5, "median": 2.5, "std": math.sqrt(1.25), "p90": 3.7, "p99": 3.97})


def test_parse_slos() -> None:
    assert parse_slos(["ttft:500", "tpot:50.5", "e2el:10000"]) == {"ttft": 500.0, "tpot": 50.5, "e2el": 10000.0}
    for bad in (["ttft"], ["itl:5"], ["ttft:fast"], ["e2el:-1"]):
        with pytest.raises(ValueError):
            parse_slos(bad)
