"""Issuing requests on the arrival schedule: one asyncio task per request.

`--max-concurrency` is a semaphore taken before a request is sent (a request
whose arrival time has come waits for a free place, as in vLLM's benchmark).
With `--duration` the prompts are reused in order and no request is sent
after that many seconds; requests in flight then run to the end, and the
run's duration is until the last one finishes.

With `--disconnect-fraction F`, each request is picked with probability F to
be abandoned after a delay uniform in [0, `--disconnect-max-delay`) from its
send time. The picks and delays come from their own seeded random stream, one
draw of each per request in sending order, so a seed always abandons the same
requests (by index) whatever the server does; a picked request that finishes
before its delay simply completes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np
from tqdm import tqdm

from benchmarks.load.arrivals import arrival_times
from benchmarks.load.client import RequestOptions, RequestResult, Target, send_request
from benchmarks.load.datasets import SampleRequest


@dataclass(frozen=True)
class LoadSchedule:
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    duration_s: float | None = None
    seed: int = 0
    disconnect_fraction: float = 0.0
    disconnect_max_delay_s: float = 1.0


@dataclass
class RunOutput:
    results: list[RequestResult]
    start: float  # time.perf_counter() when the first request could go
    duration_s: float
    peak_concurrency: int


def check_schedule(schedule: LoadSchedule) -> None:
    if schedule.max_concurrency is not None and schedule.max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1")
    if schedule.duration_s is not None:
        if not schedule.duration_s > 0:
            raise ValueError("--duration must be positive")
        if math.isinf(schedule.request_rate) and schedule.max_concurrency is None:
            raise ValueError("--duration with an infinite --request-rate needs --max-concurrency "
                             "(else requests would be sent without end)")
    if not 0.0 <= schedule.disconnect_fraction < 1.0:
        raise ValueError(f"--disconnect-fraction must be in [0, 1), got {schedule.disconnect_fraction}")
    if not (schedule.disconnect_max_delay_s > 0 and math.isfinite(schedule.disconnect_max_delay_s)):
        raise ValueError(f"--disconnect-max-delay must be a positive number of seconds, "
                         f"got {schedule.disconnect_max_delay_s}")


def disconnect_delays(schedule: LoadSchedule) -> Iterator[float | None]:
    """Endless, per request in sending order: seconds after sending to abandon it, or None to let it finish."""
    rng = np.random.default_rng([schedule.seed, 2])  # apart from the dataset's and the arrivals' streams
    while True:
        picked = rng.random() < schedule.disconnect_fraction
        delay = float(rng.uniform(0.0, schedule.disconnect_max_delay_s))
        yield delay if picked else None


def _prompts(requests: Sequence[SampleRequest], endless: bool) -> Iterator[SampleRequest]:
    return itertools.cycle(requests) if endless else iter(requests)


async def run_load(session: aiohttp.ClientSession, target: Target, requests: Sequence[SampleRequest],
                   options: RequestOptions, schedule: LoadSchedule, progress: bool = True) -> RunOutput:
    check_schedule(schedule)
    if not requests:
        raise ValueError("no requests to send")
    rng = np.random.default_rng([schedule.seed, 1])  # a stream apart from the dataset's
    semaphore = asyncio.Semaphore(schedule.max_concurrency) if schedule.max_concurrency else None
    # No tqdm at all without progress: even a disabled bar starts tqdm's monitor thread.
    bar = tqdm(total=None if schedule.duration_s else len(requests), unit="req") if progress else None
    in_flight = 0
    peak = 0

    async def one(request: SampleRequest, disconnect_after_s: float | None) -> RequestResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await send_request(session, target, request, options, disconnect_after_s)
        finally:
            in_flight -= 1
            if semaphore is not None:
                semaphore.release()
            if bar is not None:
                bar.update(1)

    tasks: list[asyncio.Task[RequestResult]] = []
    start = time.perf_counter()
    deadline = None if schedule.duration_s is None else start + schedule.duration_s
    try:
        arrivals = arrival_times(schedule.request_rate, schedule.burstiness, rng)
        for request, offset, disconnect_after_s in zip(_prompts(requests, deadline is not None), arrivals,
                                                       disconnect_delays(schedule)):
            if deadline is not None and start + offset >= deadline:
                break
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if semaphore is not None:
                if deadline is None:
                    await semaphore.acquire()
                else:
                    try:
                        await asyncio.wait_for(semaphore.acquire(), max(0.0, deadline - time.perf_counter()))
                    except TimeoutError:
                        break
            if deadline is not None and time.perf_counter() >= deadline:
                if semaphore is not None:
                    semaphore.release()
                break
            tasks.append(asyncio.create_task(one(request, disconnect_after_s)))
        results = list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        if bar is not None:
            bar.close()
    return RunOutput(results, start, time.perf_counter() - start, peak)
