"""Multi-step scheduling (`num_scheduler_steps` > 1) without a model.

The fake worker decodes a multi-step's tokens one position at a time and
checks every K/V slot they read, so a slot a multi-step did not reserve, or
one a later step reuses, shows up as a wrong prefix. Tokens, stops and block
accounting must be exactly those of single steps.
"""

from __future__ import annotations

from collections import Counter

import pytest

from helix.scheduler.outputs import SchedulerOutput
from helix.scheduler.request import Request
from helix.scheduler.scheduler import Scheduler
from tests.scheduler.test_schedule_ahead import assert_drained, eos_after, mixed_requests, run_pipelined
from tests.scheduler.test_scheduler import EOS, FakeWorker, NextToken, counting_tokens, make_request, make_scheduler


def run_counting_multi_steps(scheduler: Scheduler, requests: list[Request], next_token: NextToken,
                             positions: Counter[str] | None = None) -> tuple[dict[str, list[int]], int]:
    """Schedule after results each step; (outputs, steps in which a request decoded
    several tokens). `positions`: counts the positions each request's steps compute."""
    worker = FakeWorker(scheduler.kv.block_size, next_token)
    for request in requests:
        scheduler.add_request(request)
    num_multi = 0
    while scheduler.has_unfinished():
        output = scheduler.schedule()
        num_multi += any(item.num_steps > 1 for item in output.scheduled)
        for item in output.scheduled:
            if positions is not None:
                positions[item.request.request_id] += item.num_new_tokens + item.num_steps - 1
        scheduler.update_from_output(output, worker.execute(output))
    return {r.request_id: list(r.output_token_ids) for r in requests}, num_multi


STOPS = {"r1": 2, "r4": 1, "r7": 5, "r9": 9}  # EOS inside a multi-step: the tokens after it are dropped


@pytest.mark.parametrize("num_steps", [2, 3, 8])
def test_multi_steps_give_the_tokens_of_single_steps(num_steps: int) -> None:
    expected, _ = run_counting_multi_steps(make_scheduler(), mixed_requests(), eos_after(STOPS))
    scheduler = make_scheduler(num_scheduler_steps=num_steps)
    outputs, num_multi = run_counting_multi_steps(scheduler, mixed_requests(), eos_after(STOPS))
    assert outputs == expected
    assert outputs["r4"] == [EOS] and outputs["r7"][-1] == EOS and len(outputs["r7"]) == 5
    assert num_multi > 0
    assert_drained(scheduler)


def test_no_position_is_computed_twice() -> None:
    scheduler = make_scheduler(num_scheduler_steps=4)
    positions: Counter[str] = Counter()
    requests = mixed_requests()
    outputs, _ = run_counting_multi_steps(scheduler, requests, counting_tokens, positions)
    # Each position is computed once: the prompt's, then every output token's but the last.
    assert positions == {r.request_id: r.num_prompt_tokens + len(outputs[r.request_id]) - 1 for r in requests}


@pytest.mark.parametrize("stops", [STOPS, {}])
def test_multi_steps_scheduled_ahead_give_the_same_tokens(stops: dict[str, int]) -> None:
    expected, _ = run_counting_multi_steps(make_scheduler(), mixed_requests(), eos_after(stops))
    scheduler = make_scheduler(num_scheduler_steps=4)
    schedule, multi_ahead = scheduler.schedule, [0]
    positions: Counter[str] = Counter()

    def counting(in_flight: SchedulerOutput | None = None) -> SchedulerOutput:
        output = schedule(in_flight=in_flight)
        assert all(item.num_new_tokens >= 1 for item in output.scheduled)
        multi_ahead[0] += in_flight is not None and any(item.num_steps > 1 for item in output.scheduled)
        for item in output.scheduled:
            positions[item.request.request_id] += item.num_new_tokens + item.num_steps - 1
        return output

    scheduler.schedule = counting  # type: ignore[method-assign]
    requests = mixed_requests()
    outputs, num_ahead = run_pipelined(scheduler, requests, eos_after(stops))
    assert outputs == expected
    assert num_ahead > 0 and multi_ahead[0] > 0  # multi-steps scheduled behind steps in flight
    if not stops:  # without stop tokens nothing is launched past the end: each position once
        assert positions == {r.request_id: r.num_prompt_tokens + len(outputs[r.request_id]) - 1 for r in requests}
    assert_drained(scheduler)


def test_multi_steps_under_block_pressure_give_the_same_tokens() -> None:
    expected, _ = run_counting_multi_steps(make_scheduler(num_gpu_blocks=14, num_cpu_blocks=32), mixed_requests(),
                                           counting_tokens)
    scheduler = make_scheduler(num_gpu_blocks=14, num_cpu_blocks=32, num_scheduler_steps=4)
    outputs, num_multi = run_counting_multi_steps(scheduler, mixed_requests(), counting_tokens)
    assert outputs == expected
    assert num_multi > 0 and scheduler.counters.preemptions > 0
    assert_drained(scheduler)


def decode_step(scheduler: Scheduler, *requests: Request) -> list[tuple[str, int, int]]:
    """Run the requests' prompts, then schedule one step: (id, start, num_steps) per request."""
    worker = FakeWorker(scheduler.kv.block_size, counting_tokens)
    for request in requests:
        scheduler.add_request(request)
    prefill = scheduler.schedule()
    scheduler.update_from_output(prefill, worker.execute(prefill))
    return [(item.request.request_id, item.start, item.num_steps) for item in scheduler.schedule().scheduled]


def test_each_request_decodes_what_its_limits_leave() -> None:
    scheduler = make_scheduler(max_model_len=16, num_scheduler_steps=8)
    steps = decode_step(scheduler, make_request("long", 4, max_tokens=20 - 8), make_request("few", 4, max_tokens=3),
                        make_request("edge", 12, max_tokens=4))
    # One token each came from the prefill; "edge" reaches max_model_len (16) after 3 more.
    assert steps == [("long", 4, 8), ("few", 4, 2), ("edge", 12, 3)]


def test_a_request_without_free_blocks_decodes_one_token() -> None:
    scheduler = make_scheduler(num_gpu_blocks=4, num_scheduler_steps=8)
    # Prompts of 4 and 7 tokens, then position 4 of "a" and 7 of "b": two blocks each,
    # the whole cache. Eight tokens would take a third block for either.
    steps = decode_step(scheduler, make_request("a", 4, max_tokens=10), make_request("b", 7, max_tokens=9))
    assert steps == [("a", 4, 1), ("b", 7, 1)]


def test_samplers_that_read_the_output_decode_one_token_a_step() -> None:
    scheduler = make_scheduler(num_scheduler_steps=8)
    steps = decode_step(scheduler, make_request("a", 4, max_tokens=10, presence_penalty=0.5),
                        make_request("b", 4, max_tokens=10))
    assert steps == [("a", 4, 1), ("b", 4, 1)]  # one request that needs every token on the host sets the step


def test_a_step_with_a_prompt_chunk_is_not_a_multi_step() -> None:
    scheduler = make_scheduler(num_scheduler_steps=8, max_num_batched_tokens=6)
    steps = decode_step(scheduler, make_request("a", 4, max_tokens=10), make_request("b", 9, max_tokens=10))
    # The budget of 6 left "b" mid-prompt after the first step: it continues its prompt now.
    assert steps == [("a", 4, 1), ("b", 2, 1)]
