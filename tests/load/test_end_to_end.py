"""The load client against a real Helix server (tiny Llama, in-process, free port),
and against the stub server, which has no /metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
from pathlib import Path

import aiohttp
import pytest

from benchmarks.load import cli, scrape
from benchmarks.load.client import RequestOptions, Target
from benchmarks.load.datasets import DatasetOptions, load_requests
from benchmarks.load.metrics import summarize
from benchmarks.load.runner import LoadSchedule, disconnect_delays, run_load
from benchmarks.load.server_api import ServerTokenizer
from tests.frontend.conftest import MODEL_NAME, Server, wait_for
from tests.load.conftest import LOOP
from tests.load.stub_server import StubOptions, stub_server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

N = 20
OUTPUT_LEN = 8
ROOT = Path(__file__).resolve().parents[2]
ABORTS = "helix:request_success_total{finished_reason=abort}"

VLLM_KEYS = [
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput",
    *[f"{stat}_{metric}_ms" for metric in ("ttft", "tpot", "itl", "e2el")
      for stat in ("mean", "median", "std", "p90", "p99")],
    "input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors",
    "max_concurrency", "request_rate", "burstiness",
]


async def test_completions_through_the_cli(helix_server: Server, tmp_path: Path) -> None:
    result_file = tmp_path / "out.json"
    args = cli.parse_args(["--base-url", helix_server.base_url, "--num-prompts", str(N), "--input-len", "16",
                           "--output-len", str(OUTPUT_LEN), "--range-ratio", "0.5", "--ignore-eos",
                           "--request-rate", "200", "--burstiness", "0.5", "--max-concurrency", "8",
                           "--seed", "5", "--goodput", "ttft:60000", "e2el:60000", "--result-file", str(result_file),
                           "--disable-tqdm"])
    (returned,) = await cli.run(args)
    result = json.loads(result_file.read_text())
    assert result == json.loads(json.dumps(returned))
    for key in VLLM_KEYS:
        assert key in result, key
    assert result["model_id"] == MODEL_NAME  # the first id of /v1/models
    assert (result["completed"], result["failed"]) == (N, 0) and not any(result["errors"])
    assert result["max_concurrency"] == 8 and result["request_rate"] == 200 and result["burstiness"] == 0.5
    assert 1 <= result["peak_concurrency"] <= 8
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])

    # The prompts were the seeded token-id lists; the server's usage counted exactly them.
    async with aiohttp.ClientSession() as session:
        tokenizer = ServerTokenizer(session, helix_server.base_url, {}, MODEL_NAME)
        requests = await load_requests(DatasetOptions("random", N, "completions", input_len=16,
                                                      output_len=OUTPUT_LEN, range_ratio=0.5, seed=5), tokenizer)
    assert result["input_lens"] == [len(r.prompt) for r in requests]
    assert result["output_lens"] == [r.output_len for r in requests]  # ignore_eos: exactly max_tokens
    assert result["total_output_tokens"] == sum(r.output_len for r in requests)
    assert all(len(text) > 0 for text in result["generated_texts"])
    assert all(len(itls) < n for itls, n in zip(result["itls"], result["output_lens"]))  # a gap per later chunk
    assert sum(map(len, result["itls"])) > N and all(t > 0 for t in result["ttfts"])
    assert result["mean_tpot_ms"] > 0 and result["p99_e2el_ms"] >= result["median_e2el_ms"] > 0

    server = result["server_metrics"]
    assert server["generation_tokens"] == result["total_output_tokens"]
    assert server["finished_reasons"] == {"length": N}
    assert server["preemptions"] >= 0 and {"swaps_in", "swaps_out", "prefix_cache_hit_rate"} <= server.keys()
    assert server["histogram_means"]["helix:time_to_first_token_seconds"] > 0


async def test_chat_streams_against_helix(helix_server: Server) -> None:
    base_url = helix_server.base_url
    async with aiohttp.ClientSession() as session:
        tokenizer = ServerTokenizer(session, base_url, {}, MODEL_NAME)
        requests = await load_requests(DatasetOptions("random", N, "chat", input_len=12, output_len=OUTPUT_LEN,
                                                      seed=9), tokenizer)
        before = await scrape.scrape(session, base_url, {})
        output = await run_load(session, Target(base_url, "chat", MODEL_NAME), requests,
                                RequestOptions(ignore_eos=True), LoadSchedule(100.0, seed=9), progress=False)
        after = await scrape.scrape(session, base_url, {})
        expected_prompt_lens = []
        for request in requests:  # the server's own count of the templated prompt
            body = {"messages": [{"role": "user", "content": request.prompt}]}
            async with session.post(f"{base_url}/tokenize", json=body) as response:
                expected_prompt_lens.append((await response.json())["count"])
    result = summarize(output.results, output.duration_s)
    assert (result["completed"], result["failed"]) == (N, 0)
    assert all(r.usage_reported for r in output.results)
    assert result["input_lens"] == expected_prompt_lens
    assert result["output_lens"] == [OUTPUT_LEN] * N
    server = scrape.summarize(before, after)
    assert server is not None and server["generation_tokens"] == N * OUTPUT_LEN


async def test_disconnects_through_the_cli(helix_server: Server, tmp_path: Path) -> None:
    """Half the requests abandoned mid-generation: Helix aborts them and frees their blocks; the
    report counts them as cancelled and measures the rest."""
    argv = ["--base-url", helix_server.base_url, "--num-prompts", str(N), "--input-len", "16", "--output-len", "64",
            "--ignore-eos", "--max-concurrency", "8", "--seed", "3", "--disconnect-fraction", "0.5",
            "--disconnect-max-delay", "0.1", "--result-file", str(tmp_path / "out.json"), "--disable-tqdm"]
    args = cli.parse_args(argv)
    async with aiohttp.ClientSession() as http:
        before = await helix_server.metrics(http)
        await cli.run(args)
        result = json.loads((tmp_path / "out.json").read_text())
        picked = sum(d is not None for d in itertools.islice(disconnect_delays(cli.load_schedule(args, math.inf)), N))

        async def settled() -> bool:  # the last aborts land within a step or two
            return (await helix_server.metrics(http))["helix:num_requests_running"] == 0

        assert await wait_for(settled)
        after = await helix_server.metrics(http)
    assert result["disconnect_fraction"] == 0.5 and result["disconnect_max_delay"] == 0.1
    assert 0 < result["cancelled"] <= picked and result["failed"] == 0
    assert result["completed"] + result["cancelled"] == N
    completed = [n for n in result["output_lens"] if n]
    assert completed == [64] * result["completed"] and result["total_output_tokens"] == 64 * result["completed"]
    aborts = after.get(ABORTS, 0) - before.get(ABORTS, 0)
    assert 0 < aborts <= result["cancelled"]
    generated = after["helix:generation_tokens_total"] - before["helix:generation_tokens_total"]
    assert generated < 64 * N  # the abandoned requests stopped early
    stats = helix_server.engine.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"] and stats["running"] == stats["waiting"] == 0


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_whole_responses_through_the_cli(helix_server: Server, endpoint: str) -> None:
    args = cli.parse_args(["--base-url", helix_server.base_url, "--endpoint", endpoint, "--num-prompts", "6",
                           "--input-len", "8", "--output-len", str(OUTPUT_LEN), "--ignore-eos", "--no-stream",
                           "--disable-tqdm"])
    (result,) = await cli.run(args)
    assert (result["completed"], result["failed"], result["stream"]) == (6, 0, False)
    assert result["output_lens"] == [OUTPUT_LEN] * 6 and all(result["generated_texts"])
    assert result["ttfts"] == result["e2els"] and result["itls"] == [[]] * 6


@pytest.mark.parametrize("metrics", [None, "html", "text"])
async def test_scrape_is_skipped_without_prometheus_metrics(metrics: str | None, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    async with stub_server(StubOptions(metrics=metrics)) as (base_url, _):
        args = cli.parse_args(["--base-url", base_url, "--num-prompts", "5", "--input-len", "6", "--output-len",
                               "4", "--disable-tqdm", "--result-file", str(tmp_path / "stub.json")])
        (result,) = await cli.run(args)
    assert result["server_metrics"] is None
    assert (result["completed"], result["failed"]) == (5, 0)
    assert result["output_lens"] == [4] * 5 and result["input_lens"] == [6] * 5  # six words, as the stub counts
    captured = capsys.readouterr()
    assert "Serving Benchmark Result" in captured.out and "Server metrics" not in captured.out
    assert "metrics" not in captured.err.lower()


async def test_module_entry_point_and_sweep(tmp_path: Path) -> None:
    """`python -m benchmarks.load` in a subprocess, sweeping two rates against the stub."""
    async with stub_server() as (base_url, _):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.load", "--base-url", base_url + "/v1", "--num-prompts", "4",
            "--input-len", "5", "--output-len", "3", "--sweep", "50,inf", "--result-file", str(tmp_path / "r.json"),
            "--goodput", "ttft:10000", "--disable-tqdm", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().count("Serving Benchmark Result") == 2 and "Sweep" in stdout.decode()
    finite, infinite = (json.loads((tmp_path / name).read_text()) for name in ("r_rate50.json", "r_rateinf.json"))
    assert finite["request_rate"] == 50 and infinite["request_rate"] == "inf"
    for result in (finite, infinite):
        assert result["completed"] == 4 and result["server_metrics"] is None
        assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert not (tmp_path / "r.json").exists()
