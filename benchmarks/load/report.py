"""The printed summary table (laid out like vLLM's) and the result JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

WIDTH = 50
_SECTIONS = (
    ("ttft", "Time to First Token", "TTFT"),
    ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
    ("itl", "Inter-token Latency", "ITL"),
    ("e2el", "End-to-end Latency", "E2EL"),
)


def _rule(title: str = "", fill: str = "-") -> str:
    return f"{title:{fill}^{WIDTH}}"


def _row(label: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{label:<40} {value:<10.2f}"
    return f"{label:<40} {value!s:<10}"


def format_rate(rate: float) -> str:
    return "inf" if math.isinf(rate) else f"{rate:g}"


def summary_table(result: dict[str, Any]) -> str:
    lines = [_rule(" Serving Benchmark Result ", "="),
             _row("Successful requests:", result["completed"]),
             _row("Failed requests:", result["failed"])]
    for reason, count in sorted(result.get("failed_reasons", {}).items()):
        lines.append(_row(f"  {reason}:", count))
    if result.get("cancelled"):
        lines.append(_row("Cancelled by the client:", result["cancelled"]))
    if result.get("max_concurrency") is not None:
        lines.append(_row("Maximum request concurrency:", result["max_concurrency"]))
    lines += [
        _row("Request rate configured (RPS):", result.get("request_rate", "inf")),
        _row("Peak concurrency:", result.get("peak_concurrency", 0)),
        _row("Benchmark duration (s):", float(result["duration"])),
        _row("Total input tokens:", result["total_input_tokens"]),
        _row("Total generated tokens:", result["total_output_tokens"]),
        _row("Request throughput (req/s):", float(result["request_throughput"])),
    ]
    if result.get("request_goodput") is not None:
        lines.append(_row("Request goodput (req/s):", float(result["request_goodput"])))
    lines += [_row("Output token throughput (tok/s):", float(result["output_throughput"])),
              _row("Total Token throughput (tok/s):", float(result["total_token_throughput"]))]
    for metric, title, short in _SECTIONS:
        lines.append(_rule(title))
        lines += [_row(f"Mean {short} (ms):", float(result[f"mean_{metric}_ms"])),
                  _row(f"Median {short} (ms):", float(result[f"median_{metric}_ms"])),
                  _row(f"Std {short} (ms):", float(result[f"std_{metric}_ms"])),
                  _row(f"P90 {short} (ms):", float(result[f"p90_{metric}_ms"])),
                  _row(f"P99 {short} (ms):", float(result[f"p99_{metric}_ms"]))]
    server = result.get("server_metrics")
    if server:
        lines.append(_rule("Server metrics (during the run)"))
        for key, label in (("spec_acceptance_rate", "Speculative acceptance rate:"),
                           ("preemptions", "Preemptions:"), ("swaps_out", "Swaps out:"), ("swaps_in", "Swaps in:"),
                           ("prefix_cache_hit_rate", "Prefix cache hit rate:"),
                           ("generation_tokens", "Generated tokens (server):")):
            value = server.get(key)
            if value is not None:
                lines.append(_row(label, float(value) if key.endswith("rate") else int(value)))
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def sweep_table(results: Sequence[dict[str, Any]]) -> str:
    header = (f"{'rate':>8} {'req/s':>8} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'TPOT p50':>9} {'TPOT p99':>9} {'E2E p50':>9} {'failed':>7}")
    lines = [_rule(" Sweep (latencies in ms) ", "="), header]
    for r in results:
        rate = r["request_rate"]
        rate = rate if isinstance(rate, str) else format_rate(rate)
        lines.append(f"{rate:>8} {r['request_throughput']:>8.2f} {r['output_throughput']:>10.1f} "
                     f"{r['median_ttft_ms']:>9.1f} {r['p99_ttft_ms']:>9.1f} {r['median_tpot_ms']:>9.1f} "
                     f"{r['p99_tpot_ms']:>9.1f} {r['median_e2el_ms']:>9.1f} {r['failed']:>7}")
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def print_summary(result: dict[str, Any], file: TextIO | None = None) -> None:
    print(summary_table(result), file=file, flush=True)


def rate_path(path: str | Path, rate: float) -> Path:
    """out.json -> out_rate4.json (and out_rateinf.json) for one run of a sweep."""
    path = Path(path)
    return path.with_name(f"{path.stem}_rate{format_rate(rate)}{path.suffix}")


def write_json(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=2, allow_nan=False, default=_jsonable)
        file.write("\n")


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, should any reach the result."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
