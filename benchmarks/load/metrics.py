"""Aggregating per-request results into the figures vLLM's `benchmark_serving.py` reports.

The conventions are vLLM's so results compare directly: token totals and
latency statistics count completed requests only; a failed request's output
length is 0; std is the population std; percentiles interpolate linearly
(numpy's default); a statistic of no values is 0. TPOT is counted for
requests with more than one output token, and for goodput a request with one
token has TPOT 0. A request is good when each of its TTFT, TPOT and E2E
latency is at most the SLO given for it (in ms). Requests the client
abandoned on purpose (`--disconnect-fraction`) are counted as `cancelled`,
neither completed nor failed, and add nothing to the figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.load.client import RequestResult

SLO_METRICS = ("ttft", "tpot", "e2el")
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


def parse_slos(items: Sequence[str]) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_METRICS:
            raise ValueError(f"--goodput takes METRIC:MS with METRIC one of {', '.join(SLO_METRICS)}; got {item!r}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {item!r}: {value!r} is not a number of milliseconds") from None
        if slos[name] < 0:
            raise ValueError(f"--goodput {item!r}: the SLO must not be negative")
    return slos


def stats_ms(values_s: Sequence[float]) -> dict[str, float]:
    """mean, median, std, p90, p99 of values in seconds, in milliseconds; all 0 for no values."""
    array = np.asarray(values_s if len(values_s) else [0.0], dtype=float) * 1000.0
    return {"mean": float(np.mean(array)), "median": float(np.median(array)), "std": float(np.std(array)),
            "p90": float(np.percentile(array, 90)), "p99": float(np.percentile(array, 99))}


def is_good(result: RequestResult, slos: dict[str, float]) -> bool:
    """Whether a completed request meets every SLO (ms)."""
    values = {"ttft": result.ttft, "tpot": result.tpot or 0.0, "e2el": result.latency}
    return all(values[name] * 1000.0 <= limit for name, limit in slos.items())


def summarize(results: Sequence[RequestResult], duration_s: float, slos: dict[str, float] | None = None,
              peak_concurrency: int = 0) -> dict[str, Any]:
    """The result dict: aggregates with vLLM's keys, then per-request arrays."""
    completed = [r for r in results if r.success]
    output_lens = [r.output_tokens if r.success else 0 for r in results]
    total_input = sum(r.prompt_len for r in completed)
    total_output = sum(output_lens)

    def per_second(count: float) -> float:
        return count / duration_s if duration_s > 0 else 0.0

    series = {
        "ttft": [r.ttft for r in completed],
        "tpot": [t for t in (r.tpot for r in completed) if t is not None],
        "itl": [gap for r in completed for gap in r.itl],
        "e2el": [r.latency for r in completed],
    }
    good = sum(is_good(r, slos) for r in completed) if slos else 0
    summary: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(completed),
        "failed": sum(r.failed for r in results),
        "cancelled": sum(r.cancelled for r in results),
        "failed_reasons": dict(Counter(r.error_kind for r in results if r.failed)),
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": per_second(len(completed)),
        "request_goodput": per_second(good) if slos else None,
        "output_throughput": per_second(total_output),
        "total_token_throughput": per_second(total_input + total_output),
        "peak_concurrency": peak_concurrency,
    }
    for metric in LATENCY_METRICS:
        for stat, value in stats_ms(series[metric]).items():
            summary[f"{stat}_{metric}_ms"] = value
    summary.update({
        "input_lens": [r.prompt_len for r in results],
        "output_lens": output_lens,
        "ttfts": [r.ttft for r in results],
        "itls": [list(r.itl) for r in results],
        "e2els": [r.latency for r in results],
        "generated_texts": [r.generated_text for r in results],
        "errors": [r.error for r in results],
    })
    return summary
