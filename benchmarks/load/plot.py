"""PNG charts of a run (latency CDFs, output throughput over time) and of a
sweep (latency against achieved throughput). matplotlib is optional: it is
imported only here, only when a plot is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load.client import RequestResult

INSTALL_HINT = "plotting needs matplotlib: pip install 'helix[plot]' (or pip install matplotlib)"


class PlotUnavailable(RuntimeError):
    pass


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or PlotUnavailable with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(axis: Any, values_s: Sequence[float], title: str) -> None:
    values = np.sort(np.asarray(values_s, dtype=float)) * 1000.0
    if len(values):
        axis.plot(values, np.arange(1, len(values) + 1) / len(values), drawstyle="steps-post")
        for q, style in ((50, "--"), (99, ":")):
            axis.axvline(np.percentile(values, q), color="grey", linestyle=style, linewidth=0.8, label=f"p{q}")
        axis.legend(loc="lower right", fontsize="small")
    else:
        axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(f"{title} CDF")
    axis.set_xlabel("ms")
    axis.set_ylabel("fraction of requests")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)


def throughput_series(results: Sequence[RequestResult], start: float, duration_s: float,
                      bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Output tokens per second in equal time bins (bin centres in s, rates). Each text
    chunk of a completed request carries an equal share of its output tokens."""
    width = max(duration_s, 1e-3) / bins
    totals = np.zeros(bins)
    for result in results:
        if not result.success or not result.chunk_times:
            continue
        share = result.output_tokens / len(result.chunk_times)
        for moment in result.chunk_times:
            totals[min(bins - 1, max(0, int((moment - start) / width)))] += share
    return (np.arange(bins) + 0.5) * width, totals / width


def plot_run(results: Sequence[RequestResult], start: float, duration_s: float, path: str | Path,
             title: str = "") -> None:
    plt = pyplot()
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    completed = [r for r in results if r.success]
    _cdf(axes[0][0], [r.ttft for r in completed], "TTFT")
    _cdf(axes[0][1], [t for t in (r.tpot for r in completed) if t is not None], "TPOT")
    _cdf(axes[1][0], [r.latency for r in completed], "E2E latency")
    times, rates = throughput_series(results, start, duration_s)
    axes[1][1].plot(times, rates)
    axes[1][1].set_title("Output throughput over time")
    axes[1][1].set_xlabel("s since start")
    axes[1][1].set_ylabel("tokens/s")
    axes[1][1].grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_sweep(summaries: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Median and p99 of TTFT, TPOT and E2E latency against achieved output throughput,
    one point per request rate."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    throughput = [s["output_throughput"] for s in summaries]
    for axis, (metric, label) in zip(axes, (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "E2E latency"))):
        for stat, marker in (("median", "o-"), ("p99", "s--")):
            axis.plot(throughput, [s[f"{stat}_{metric}_ms"] for s in summaries], marker, label=stat)
        for x, s in zip(throughput, summaries):
            rate = s["request_rate"]
            axis.annotate(rate if isinstance(rate, str) else f"{rate:g}", (x, s[f"median_{metric}_ms"]),
                          textcoords="offset points", xytext=(4, 4), fontsize="small")
        axis.set_title(f"{label} vs throughput")
        axis.set_xlabel("output tokens/s")
        axis.set_ylabel("ms")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title or "Request-rate sweep (points labelled by configured rate, req/s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
