"""Random-disconnect mode: seeded picks, requests abandoned mid-flight (the
server sees their connections close), counted as cancelled apart from
completed and failed ones."""

from __future__ import annotations

import asyncio
import itertools
import math

import aiohttp
import numpy as np
import pytest

from benchmarks.load.client import RequestOptions, Target
from benchmarks.load.datasets import SampleRequest
from benchmarks.load.metrics import summarize
from benchmarks.load.runner import LoadSchedule, RunOutput, disconnect_delays, run_load
from tests.load.conftest import LOOP
from tests.load.stub_server import MODEL, StubOptions, stub_server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

COUNT = 40
OUTPUT_LEN = 10
SLOW = StubOptions(token_delay_s=0.05)  # a request takes 0.25 s or more: longer than any delay below
DISCONNECTING = LoadSchedule(math.inf, seed=3, disconnect_fraction=0.5, disconnect_max_delay_s=0.1)


def picked(schedule: LoadSchedule, count: int = COUNT) -> set[int]:
    """Indices of the requests the schedule abandons."""
    delays = itertools.islice(disconnect_delays(schedule), count)
    return {i for i, delay in enumerate(delays) if delay is not None}


def cancelled(output: RunOutput) -> set[int]:
    return {i for i, result in enumerate(output.results) if result.cancelled}


async def run(base_url: str, schedule: LoadSchedule, stream: bool = True, output_len: int = OUTPUT_LEN,
              count: int = COUNT) -> RunOutput:
    """`count` requests, request i with the prompt [i] so that the stub's records name it."""
    requests = [SampleRequest([i], 1, output_len) for i in range(count)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await run_load(session, Target(base_url, "completions", MODEL), requests,
                              RequestOptions(stream=stream), schedule, progress=False)


def received(options: StubOptions) -> set[int]:
    return {body["prompt"][0] for body in options.requests}


async def seen_disconnected(options: StubOptions, count: int) -> set[int]:
    """The stub's handlers notice a closed connection within a moment; wait for `count` of them."""
    for _ in range(100):
        if len(options.disconnected) >= count:
            break
        await asyncio.sleep(0.02)
    return {prompt[0] for prompt in options.disconnected}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_abandoned_requests_are_cancelled_and_their_connections_closed(stream: bool) -> None:
    async with stub_server(SLOW) as (base_url, options):
        output = await run(base_url, DISCONNECTING, stream)
        abandoned = cancelled(output)
        # A request abandoned within a few ms may go before its body reached a handler.
        reached = abandoned & received(options)
        assert await seen_disconnected(options, len(reached)) == reached
    assert len(reached) >= 0.25 * COUNT and received(options) >= set(range(COUNT)) - abandoned
    assert abandoned == picked(DISCONNECTING)
    assert 0.3 * COUNT <= len(abandoned) <= 0.7 * COUNT  # F = 0.5
    for index, result in enumerate(output.results):
        if index in abandoned:
            assert not result.success and not result.failed and result.error_kind == result.error == ""
            assert result.output_tokens == 0 and result.itl == [] and result.generated_text == ""
        else:
            assert result.success and result.output_tokens == OUTPUT_LEN


async def test_report_counts_cancelled_apart_and_measures_completed_only() -> None:
    async with stub_server(SLOW) as (base_url, _):
        output = await run(base_url, DISCONNECTING)
    completed = [r for r in output.results if r.success]
    summary = summarize(output.results, output.duration_s)
    assert summary["cancelled"] == len(cancelled(output)) == COUNT - len(completed)
    assert (summary["completed"], summary["failed"], summary["failed_reasons"]) == (len(completed), 0, {})
    assert summary["total_output_tokens"] == OUTPUT_LEN * len(completed)
    assert summary["request_throughput"] == pytest.approx(len(completed) / output.duration_s)
    assert summary["mean_ttft_ms"] == pytest.approx(1000 * np.mean([r.ttft for r in completed]))
    assert summary["mean_e2el_ms"] == pytest.approx(1000 * np.mean([r.latency for r in completed]))


async def test_same_seed_abandons_the_same_requests() -> None:
    other = LoadSchedule(math.inf, seed=4, disconnect_fraction=0.5, disconnect_max_delay_s=0.1)
    async with stub_server(SLOW) as (base_url, _):
        first, second, third = [await run(base_url, schedule) for schedule in (DISCONNECTING, DISCONNECTING, other)]
    assert cancelled(first) == cancelled(second)
    assert cancelled(first) != cancelled(third) and cancelled(third) == picked(other)


async def test_a_request_done_before_its_delay_completes() -> None:
    schedule = LoadSchedule(math.inf, seed=5, disconnect_fraction=0.9, disconnect_max_delay_s=30.0)
    delays = [d for d in itertools.islice(disconnect_delays(schedule), 20) if d is not None]
    assert len(delays) >= 15 and min(delays) > 1.0  # this seed picks most, none of them early
    async with stub_server(StubOptions(token_delay_s=0.001)) as (base_url, options):
        output = await run(base_url, schedule, output_len=3, count=20)
        assert options.disconnected == []
    assert all(r.success and not r.cancelled for r in output.results)
    assert output.duration_s < 1.0  # finishing does not wait for the disconnect timer
