"""PNG output (when matplotlib is installed) and the hint when it is not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks.load import cli, plot
from benchmarks.load.client import RequestResult
from benchmarks.load.metrics import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def results() -> list[RequestResult]:
    out = []
    for i in range(10):
        start = 0.1 * i
        chunks = [start + 0.05 + 0.01 * k for k in range(5)]
        out.append(RequestResult(success=True, prompt_len=8, output_tokens=5, ttft=0.05, latency=0.09,
                                 itl=[0.01] * 4, start=start, chunk_times=chunks))
    return out + [RequestResult(start=0.5).fail("HTTP 503", "HTTP 503: busy")]


def test_throughput_series_counts_every_output_token() -> None:
    times, rates = plot.throughput_series(results(), start=0.0, duration_s=1.0, bins=10)
    assert len(times) == len(rates) == 10 and times[0] == pytest.approx(0.05)
    assert sum(rates) * 0.1 == pytest.approx(50)  # 10 completed requests x 5 tokens


def test_run_and_sweep_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot.plot_run(results(), 0.0, 1.0, tmp_path / "run.png", title="test")
    summaries = [{**summarize(results(), 1.0 + i), "request_rate": rate} for i, rate in enumerate([1.0, 4.0, "inf"])]
    plot.plot_sweep(summaries, tmp_path / "sweep.png")
    for name in ("run.png", "sweep.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_missing_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(plot.PlotUnavailable, match=r"pip install 'helix\[plot\]'"):
        plot.plot_run(results(), 0.0, 1.0, "unused.png")
    with pytest.raises(SystemExit) as exit_info:  # refused before any request is sent
        cli.parse_args(["--base-url", "http://127.0.0.1:9", "--plot", "out.png"])
    assert exit_info.value.code == 2
    assert "helix[plot]" in capsys.readouterr().err
