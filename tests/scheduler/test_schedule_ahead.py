"""Scheduling a step ahead of the previous step's results, without a model.

The pipelined loop mirrors the engine: schedule N+1 while N is in flight,
then apply N's results, then run N+1 (the fake worker runs a step only after
the previous step's results are applied, as the device does when it feeds
the in-flight token). The fake worker checks every K/V slot each step reads.
"""

from __future__ import annotations

from helix.scheduler.outputs import ModelOutput, SchedulerOutput
from helix.scheduler.request import Request
from helix.scheduler.scheduler import Scheduler
from tests.scheduler.test_scheduler import EOS, FakeWorker, NextToken, counting_tokens, make_request, make_scheduler


def eos_after(lengths: dict[str, int]) -> NextToken:
    """Count up like counting_tokens, but emit EOS as request r's lengths[r]-th token."""
    def next_token(request: Request) -> int:
        if len(request.output_token_ids) + 1 == lengths.get(request.request_id, -1):
            return EOS
        return counting_tokens(request)
    return next_token


def run_sync(scheduler: Scheduler, requests: list[Request], next_token: NextToken) -> dict[str, list[int]]:
    worker = FakeWorker(scheduler.kv.block_size, next_token)
    for request in requests:
        scheduler.add_request(request)
    while scheduler.has_unfinished():
        output = scheduler.schedule()
        scheduler.update_from_output(output, worker.execute(output))
    return {r.request_id: list(r.output_token_ids) for r in requests}


def run_pipelined(scheduler: Scheduler, requests: list[Request],
                  next_token: NextToken) -> tuple[dict[str, list[int]], int]:
    """(outputs, steps scheduled ahead)."""
    worker = FakeWorker(scheduler.kv.block_size, next_token)
    for request in requests:
        scheduler.add_request(request)
    in_flight: tuple[SchedulerOutput, ModelOutput] | None = None
    num_ahead = 0
    while True:
        if in_flight is not None and not scheduler.can_schedule_ahead(in_flight[0]):
            scheduler.update_from_output(*in_flight)
            in_flight = None
        output = scheduler.schedule(in_flight=in_flight[0] if in_flight else None)
        num_ahead += in_flight is not None
        if in_flight is not None:
            scheduler.update_from_output(*in_flight)
        in_flight = (output, worker.execute(output))
        if not scheduler.has_unfinished():
            scheduler.update_from_output(*in_flight)
            break
    return {r.request_id: list(r.output_token_ids) for r in requests}, num_ahead


def mixed_requests(**params) -> list[Request]:
    return [make_request(f"r{i}", 3 + 7 * i % 23, max_tokens=5 + i % 7, **params) for i in range(12)]


def assert_drained(scheduler: Scheduler) -> None:
    assert scheduler.kv.num_free_gpu_blocks == scheduler.kv.num_gpu_blocks
    assert not scheduler.requests


def test_pipelined_steps_give_the_same_tokens() -> None:
    stops = {"r1": 2, "r4": 1, "r7": 5}  # EOS mid-flight: the position scheduled ahead is dropped
    expected = run_sync(make_scheduler(), mixed_requests(), eos_after(stops))
    scheduler = make_scheduler()
    outputs, num_ahead = run_pipelined(scheduler, mixed_requests(), eos_after(stops))
    assert outputs == expected
    assert outputs["r1"][-1] == EOS and len(outputs["r1"]) == 2
    assert num_ahead > 5
    assert_drained(scheduler)


def test_pipelined_steps_under_block_pressure_fall_back_to_preemption() -> None:
    expected = run_sync(make_scheduler(num_gpu_blocks=14, num_cpu_blocks=32), mixed_requests(), counting_tokens)
    scheduler = make_scheduler(num_gpu_blocks=14, num_cpu_blocks=32)
    outputs, num_ahead = run_pipelined(scheduler, mixed_requests(), counting_tokens)
    assert outputs == expected
    assert scheduler.counters.preemptions > 0 and num_ahead > 0
    assert_drained(scheduler)


def test_ahead_step_counts_the_in_flight_token() -> None:
    scheduler = make_scheduler()
    request = make_request("a", 6, max_tokens=3)
    scheduler.add_request(request)
    prefill = scheduler.schedule()
    assert [(s.start, s.num_new_tokens, s.samples) for s in prefill.scheduled] == [(0, 6, True)]
    ahead = scheduler.schedule(in_flight=prefill)
    # Position 6 holds the token the prefill is still sampling.
    assert [(s.start, s.num_new_tokens, s.samples) for s in ahead.scheduled] == [(6, 1, True)]
    assert request.num_computed_tokens == 0 and request.output_token_ids == []  # nothing applied yet


def test_request_reaching_max_tokens_in_flight_is_not_scheduled_ahead() -> None:
    scheduler = make_scheduler()
    worker = FakeWorker(scheduler.kv.block_size, counting_tokens)
    scheduler.add_request(make_request("a", 4, max_tokens=2))
    first = scheduler.schedule()
    scheduler.update_from_output(first, worker.execute(first))  # one token of two
    second = scheduler.schedule()
    assert scheduler.schedule(in_flight=second).scheduled == []  # the second token ends it


def test_ahead_step_never_preempts() -> None:
    scheduler = make_scheduler(num_gpu_blocks=3, num_cpu_blocks=8)
    worker = FakeWorker(scheduler.kv.block_size, counting_tokens)
    first, second = make_request("a", 4, max_tokens=8), make_request("b", 4, max_tokens=8)
    scheduler.add_request(first)
    scheduler.add_request(second)
    step = scheduler.schedule()  # both prompts: 2 of the 3 blocks
    ahead = scheduler.schedule(in_flight=step)
    # Each needs a second block for position 4; only one is free and nobody may be preempted.
    assert [s.request.request_id for s in ahead.scheduled] == ["a"]
    assert ahead.needs_preemption and scheduler.counters.preemptions == 0
    assert not scheduler.can_schedule_ahead(ahead)
    scheduler.update_from_output(step, worker.execute(step))
    scheduler.update_from_output(ahead, worker.execute(ahead))
    after = scheduler.schedule()
    assert scheduler.counters.preemptions == 1 and not after.needs_preemption


def test_samplers_reading_the_output_need_results() -> None:
    for params in ({"presence_penalty": 0.5}, {"frequency_penalty": 0.5}, {"repetition_penalty": 1.2},
                   {"min_tokens": 2}):
        scheduler = make_scheduler()
        scheduler.add_request(make_request("a", 4, max_tokens=4, **params))
        assert not scheduler.can_schedule_ahead(scheduler.schedule()), params
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 4, max_tokens=4, temperature=0.8, top_p=0.9, logit_bias={5: 1.0}))
    assert scheduler.can_schedule_ahead(scheduler.schedule())
