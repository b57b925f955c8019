"""One request, and the issuing loop, against the stub server (events split across reads)."""

from __future__ import annotations

import math

import aiohttp
import pytest

from benchmarks.load.client import RequestOptions, Target, send_request
from benchmarks.load.datasets import SampleRequest
from benchmarks.load.runner import LoadSchedule, run_load
from tests.load.conftest import LOOP
from tests.load.stub_server import MODEL, StubOptions, stub_server, token_text

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

REQUEST = SampleRequest([1, 2, 3, 4, 5], prompt_len=99, output_len=6)


async def send(base_url: str, mode: str | None = None, request: SampleRequest = REQUEST):
    extra = {"stub": mode} if mode else {}
    async with aiohttp.ClientSession() as session:
        return await send_request(session, Target(base_url, "completions", MODEL), request,
                                  RequestOptions(extra_body=extra))


async def test_streamed_request_is_timed_and_counted() -> None:
    async with stub_server(StubOptions(token_delay_s=0.01)) as (base_url, options):
        result = await send(base_url)
    assert result.success and result.error == ""
    assert result.generated_text == "".join(token_text(i) for i in range(6))
    assert result.usage_reported and (result.prompt_len, result.output_tokens) == (5, 6)
    assert len(result.itl) == 5 and all(gap > 0.004 for gap in result.itl)
    assert 0 < result.ttft < result.latency
    assert result.latency == pytest.approx(result.ttft + sum(result.itl), abs=0.05)
    assert result.tpot == pytest.approx((result.latency - result.ttft) / 5)
    body = options.requests[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["prompt"] == [1, 2, 3, 4, 5] and body["max_tokens"] == 6 and body["model"] == MODEL
    assert "ignore_eos" not in body  # sent only when asked for


async def test_whole_response_without_streaming() -> None:
    async with stub_server(StubOptions(token_delay_s=0.01)) as (base_url, options):
        async with aiohttp.ClientSession() as session:
            result = await send_request(session, Target(base_url, "completions", MODEL), REQUEST,
                                        RequestOptions(stream=False))
    assert result.success and result.generated_text == "".join(token_text(i) for i in range(6))
    assert result.usage_reported and (result.prompt_len, result.output_tokens) == (5, 6)
    assert result.ttft == result.latency > 0.05 and result.itl == [] and result.tpot == 0.0
    assert result.chunk_times == [result.start + result.latency]
    body = options.requests[0]
    assert body["stream"] is False and "stream_options" not in body


async def test_without_usage_chunks_are_counted() -> None:
    async with stub_server() as (base_url, _):
        result = await send(base_url, "no_usage")
    assert result.success and not result.usage_reported
    assert result.output_tokens == 6 and result.prompt_len == 99  # the dataset's estimate


@pytest.mark.parametrize("mode, kind, text", [
    ("error", "stream error", "engine failed"),
    ("http503", "HTTP 503", "HTTP 503: server is busy"),
    ("no_done", "incomplete stream", "[DONE]"),
])
async def test_failures_are_reported(mode: str, kind: str, text: str) -> None:
    async with stub_server() as (base_url, _):
        result = await send(base_url, mode)
    assert not result.success and result.error_kind == kind and text in result.error


async def test_connection_refused_is_a_failure() -> None:
    async with stub_server() as (base_url, _):
        pass  # closed again: nothing listens there now
    result = await send(base_url)
    assert not result.success and result.error_kind.startswith("Client") and result.error


async def run(base_url: str, count: int, schedule: LoadSchedule):
    requests = [SampleRequest([1, 2, 3], 3, 5)] * count
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await run_load(session, Target(base_url, "completions", MODEL), requests, RequestOptions(),
                              schedule, progress=False)


async def test_infinite_rate_sends_all_at_once() -> None:
    async with stub_server(StubOptions(token_delay_s=0.05)) as (base_url, _):
        output = await run(base_url, 12, LoadSchedule(math.inf))
    assert len(output.results) == 12 and all(r.success for r in output.results)
    assert output.peak_concurrency == 12
    starts = sorted(r.start for r in output.results)
    assert starts[-1] < min(r.start + r.latency for r in output.results)  # all sent before any finished


async def test_max_concurrency_caps_requests_in_flight() -> None:
    async with stub_server(StubOptions(token_delay_s=0.01)) as (base_url, _):
        output = await run(base_url, 10, LoadSchedule(math.inf, max_concurrency=3))
    assert output.peak_concurrency == 3 and all(r.success for r in output.results)


async def test_finite_rate_spreads_requests() -> None:
    async with stub_server(StubOptions(token_delay_s=0.001)) as (base_url, _):
        output = await run(base_url, 10, LoadSchedule(50.0, seed=1))
    starts = sorted(r.start - output.start for r in output.results)
    assert starts[0] < 0.05 and 0.05 < starts[-1] < 1.0  # nine gaps of mean 20 ms (96 ms in all for this seed)


async def test_duration_stops_sending() -> None:
    async with stub_server(StubOptions(token_delay_s=0.001)) as (base_url, _):
        output = await run(base_url, 4, LoadSchedule(100.0, duration_s=0.3, seed=2))
    assert 15 <= len(output.results) <= 50  # ~30 requests: the 4 prompts reused
    assert all(r.success for r in output.results)
    assert max(r.start - output.start for r in output.results) < 0.3
