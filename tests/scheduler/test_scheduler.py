"""Scheduler and KV cache manager without a model.

A fake worker stands in for the model. It keeps a fake KV cache: the slot of
position p stores the tuple of tokens 0..p (what real K/V at p depends on).
Every step it applies the swaps, writes the scheduled positions, then checks
that every position each request attends to holds that request's own prefix,
so a lost, aliased or stale block shows up as a wrong slot, not just as a
miscount. It samples a token for each request whose step computes its last
known token (a multi-step: `num_steps` tokens, each written at the next
position before the next is sampled).
"""

from __future__ import annotations

import random
import zlib
from typing import Callable

import pytest

from helix.block_manager.block_table import blocks_for_tokens
from helix.block_manager.kv_cache_manager import KVCacheManager
from helix.sampling_params import SamplingParams
from helix.scheduler.config import SchedulerConfig
from helix.scheduler.outputs import ModelOutput, RequestUpdate, SchedulerOutput
from helix.scheduler.request import FinishReason, Request, RequestStatus
from helix.request_limits import InfeasibleRequestError
from helix.scheduler.scheduler import Scheduler

BLOCK = 4
EOS = 2
NextToken = Callable[[Request], int]


def counting_tokens(request: Request) -> int:
    """Outputs 100, 101, 102, ... (never EOS, never a prompt token)."""
    return 100 + len(request.output_token_ids)


def prompt_tokens(length: int, seed: str) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 100) for _ in range(length)]


def make_request(request_id: str, prompt: int | list[int], max_tokens: int = 4, *, priority: int = 0,
                 cache_salt: str | None = None, **params) -> Request:
    tokens = prompt if isinstance(prompt, list) else prompt_tokens(prompt, request_id)
    return Request(request_id, list(tokens), SamplingParams(max_tokens=max_tokens, **params),
                   eos_token_ids=frozenset([EOS]), priority=priority, cache_salt=cache_salt)


def make_scheduler(num_gpu_blocks: int = 64, num_cpu_blocks: int = 0, *, prefix_caching: bool = False,
                   watermark: float = 0.0, max_model_len: int = 256, max_num_seqs: int = 256,
                   max_num_batched_tokens: int = 64, policy: str = "fcfs",
                   num_scheduler_steps: int = 1) -> Scheduler:
    kv = KVCacheManager(num_gpu_blocks, num_cpu_blocks, BLOCK, prefix_caching, watermark)
    config = SchedulerConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                             max_num_batched_tokens=max_num_batched_tokens, policy=policy, watermark=watermark,
                             check_invariants=True, num_scheduler_steps=num_scheduler_steps)
    return Scheduler(config, kv)


class FakeWorker:
    def __init__(self, block_size: int, next_token: NextToken):
        self.block_size = block_size
        self.next_token = next_token
        self.gpu: dict[tuple[int, int], tuple[int, ...]] = {}
        self.cpu: dict[tuple[int, int], tuple[int, ...]] = {}
        self.sampled: list[str] = []  # ids that sampled in the last step

    def execute(self, output: SchedulerOutput) -> ModelOutput:
        self._copy(output.swap_out, self.gpu, self.cpu)
        self._copy(output.swap_in, self.cpu, self.gpu)
        # `samples` reads the live request: it is only meaningful before the update.
        sampled = {item.request.request_id: self._sample(item.request, item.num_steps)
                   for item in output.scheduled if item.samples}
        for item in output.scheduled:
            end = item.start + item.num_new_tokens + item.num_steps - 1  # a multi-step computes num_steps positions
            assert len(item.block_table) >= blocks_for_tokens(end, self.block_size)
            tokens = item.request.all_token_ids + sampled.get(item.request.request_id, [])[:-1]
            for position in range(item.start, end):
                self.gpu[self._slot(item.block_table, position)] = tuple(tokens[:position + 1])
        for item in output.scheduled:  # attention reads after every write of the step
            tokens = item.request.all_token_ids + sampled.get(item.request.request_id, [])[:-1]
            for position in range(item.start + item.num_new_tokens + item.num_steps - 1):
                stored = self.gpu.get(self._slot(item.block_table, position))
                assert stored == tuple(tokens[:position + 1]), (
                    f"{item.request.request_id}: position {position} holds the wrong K/V")
        self.sampled = list(sampled)
        return ModelOutput(sampled=sampled)

    def _sample(self, request: Request, count: int) -> list[int]:
        """`count` tokens, as if each were appended before the next is chosen."""
        outputs = request.output_token_ids
        for _ in range(count):
            outputs.append(self.next_token(request))
        tokens = outputs[len(outputs) - count:]
        del outputs[len(outputs) - count:]
        return tokens

    def _slot(self, table: tuple[int, ...], position: int) -> tuple[int, int]:
        return table[position // self.block_size], position % self.block_size

    def _copy(self, pairs: list[tuple[int, int]], source: dict, destination: dict) -> None:
        for src, dst in pairs:
            for offset in range(self.block_size):
                if (src, offset) in source:
                    destination[(dst, offset)] = source[(src, offset)]
                else:
                    destination.pop((dst, offset), None)


class Harness:
    def __init__(self, scheduler: Scheduler, next_token: NextToken = counting_tokens):
        self.scheduler = scheduler
        self.kv = scheduler.kv
        self.worker = FakeWorker(scheduler.kv.block_size, next_token)
        self.finished_ids: list[str] = []

    def add(self, *requests: Request) -> None:
        for request in requests:
            self.scheduler.add_request(request)

    def step(self) -> tuple[SchedulerOutput, list[RequestUpdate]]:
        swapped = list(self.scheduler.swapped)
        output = self.scheduler.schedule()
        swapped_in = [r.request_id for r in swapped if r.status is RequestStatus.RUNNING]
        assert set(swapped_in) <= set(ids(output)), "swapped in, yet not run"
        assert bool(swapped_in) == bool(output.swap_in)
        config = self.scheduler.config
        assert output.num_batched_tokens <= config.max_num_batched_tokens
        assert len(self.scheduler.running) <= config.max_num_seqs
        assert len({s.request.request_id for s in output.scheduled}) == len(output.scheduled)
        assert all(s.num_new_tokens > 0 and s.request.status is RequestStatus.RUNNING for s in output.scheduled)
        updates = self.scheduler.update_from_output(output, self.worker.execute(output))
        self.scheduler.check_invariants()
        self.finished_ids.extend(output.finished_ids)
        return output, updates

    def step_until(self, done: Callable[[], bool], max_steps: int = 100) -> SchedulerOutput:
        for _ in range(max_steps):
            output, _ = self.step()
            if done():
                return output
        raise AssertionError("the awaited state never came")

    def run(self, max_steps: int = 500) -> list[SchedulerOutput]:
        outputs = []
        while self.scheduler.has_unfinished():
            assert len(outputs) < max_steps, "the scheduler stopped making progress"
            outputs.append(self.step()[0])
        return outputs

    def assert_drained(self) -> None:
        scheduler, kv = self.scheduler, self.kv
        scheduler.check_invariants()
        assert not scheduler.has_unfinished()
        assert scheduler.waiting == scheduler.running == scheduler.swapped == []
        assert kv.num_free_gpu_blocks == kv.num_gpu_blocks
        assert kv.num_used_cpu_blocks == 0


def ids(output: SchedulerOutput) -> list[str]:
    return [s.request.request_id for s in output.scheduled]


def spans(output: SchedulerOutput) -> list[tuple[str, int, int]]:
    return [(s.request.request_id, s.start, s.num_new_tokens) for s in output.scheduled]


def first_step_scheduling(outputs: list[SchedulerOutput], request_id: str) -> int:
    return next(i for i, output in enumerate(outputs) if request_id in ids(output))


# -- admission -------------------------------------------------------------------


@pytest.mark.parametrize("second_prompt, admitted", [(12, True), (13, False)])
def test_admission_needs_free_blocks_above_the_watermark(second_prompt: int, admitted: bool) -> None:
    # 10 blocks, watermark 0.2 -> 2 blocks stay free. A takes 5, leaving 5:
    # 12 tokens need 3 blocks (3 + 2 <= 5, admitted), 13 tokens need 4 (4 + 2 > 5, waits).
    harness = Harness(make_scheduler(10, watermark=0.2))
    a, b = make_request("a", 20), make_request("b", second_prompt)
    harness.add(a, b)
    output, _ = harness.step()
    assert ids(output) == (["a", "b"] if admitted else ["a"])
    assert b.status is (RequestStatus.RUNNING if admitted else RequestStatus.WAITING)
    assert harness.kv.num_free_gpu_blocks == (2 if admitted else 5)
    assert len(harness.kv.block_table("b")) == (3 if admitted else 0)
    harness.run()
    assert len(b.output_token_ids) == 4
    harness.assert_drained()


@pytest.mark.parametrize("budget, admitted", [(5, True), (6, False)])
def test_admission_needs_blocks_for_the_first_chunk_only(budget: int, admitted: bool) -> None:
    # 5 blocks; x's 12-token prompt plus its first decode token hold 4. y's prompt needs 4 blocks
    # in all, but with 1 budget token going to x's decode only its first chunk must fit:
    # 4 tokens (1 block) fit in the 1 free block, 5 tokens (2 blocks) do not.
    harness = Harness(make_scheduler(5, max_num_batched_tokens=budget))
    x = make_request("x", 12, max_tokens=4)
    harness.add(x)
    harness.step_until(lambda: x.num_computed_tokens == 12)
    harness.add(make_request("y", 16, max_tokens=2))
    output, _ = harness.step()
    assert spans(output) == ([("x", 12, 1), ("y", 0, budget - 1)] if admitted else [("x", 12, 1)])
    assert harness.kv.num_free_gpu_blocks == (0 if admitted else 1)
    harness.run()
    harness.assert_drained()


def test_head_of_the_queue_is_not_overtaken() -> None:
    # A holds 6 of 10 blocks; B (5 blocks) must wait, and C (1 block) must not jump ahead of it.
    harness = Harness(make_scheduler(10))
    a, b, c = make_request("a", 24), make_request("b", 20), make_request("c", 3)
    harness.add(a, b, c)
    first, _ = harness.step()
    assert ids(first) == ["a"]
    assert b.status is c.status is RequestStatus.WAITING
    outputs = [first] + harness.run()
    assert first_step_scheduling(outputs, "b") <= first_step_scheduling(outputs, "c")
    assert all(len(r.output_token_ids) == 4 for r in (a, b, c))
    harness.assert_drained()


# -- chunked prefill and batching ------------------------------------------------


def test_long_prompt_is_chunked_and_samples_only_on_the_last_chunk() -> None:
    harness = Harness(make_scheduler(max_num_batched_tokens=16))
    request = make_request("a", 50, max_tokens=2)
    harness.add(request)
    expected = [(0, 16, False), (16, 16, False), (32, 16, False), (48, 2, True), (50, 1, True)]
    for start, num_new, samples in expected:
        output, _ = harness.step()
        [item] = output.scheduled
        assert (item.start, item.num_new_tokens) == (start, num_new)
        assert harness.worker.sampled == (["a"] if samples else [])
        assert request.num_computed_tokens == start + num_new
        if not samples:
            assert request.output_token_ids == []
    assert request.output_token_ids == [100, 101]
    assert request.finish_reason is FinishReason.LENGTH
    harness.assert_drained()


def test_decodes_and_a_prefill_chunk_share_a_step_within_the_budget() -> None:
    harness = Harness(make_scheduler(max_num_batched_tokens=16))
    a = make_request("a", 6, max_tokens=10)
    harness.add(a)
    output, _ = harness.step()
    assert spans(output) == [("a", 0, 6)]
    harness.add(make_request("b", 40, max_tokens=2))
    expected = [
        [("a", 6, 1), ("b", 0, 15)],
        [("a", 7, 1), ("b", 15, 15)],
        [("a", 8, 1), ("b", 30, 10)],  # b's last chunk: 11 tokens of 16
        [("a", 9, 1), ("b", 40, 1)],
    ]
    for index, step_spans in enumerate(expected):
        output, _ = harness.step()
        assert spans(output) == step_spans
        assert harness.worker.sampled == (["a", "b"] if index >= 2 else ["a"])
    harness.run()
    harness.assert_drained()


def test_max_num_seqs_caps_the_running_set() -> None:
    harness = Harness(make_scheduler(max_num_seqs=2))
    requests = [make_request(f"r{i}", 4, max_tokens=3) for i in range(5)]
    harness.add(*requests)
    outputs = harness.run()
    assert ids(outputs[0]) == ["r0", "r1"]
    assert all(len(output.scheduled) <= 2 for output in outputs)
    assert [first_step_scheduling(outputs, r.request_id) for r in requests] == sorted(
        first_step_scheduling(outputs, r.request_id) for r in requests)
    assert all(r.output_token_ids == [100, 101, 102] for r in requests)
    harness.assert_drained()


# -- preemption ------------------------------------------------------------------


def three_requests_filling_six_blocks(harness: Harness, priorities: tuple[int, int, int] = (0, 0, 0)
                                      ) -> list[Request]:
    """Three 7-token prompts take 2 blocks each of 6; the third step needs a 7th block."""
    requests = [make_request(name, 7, max_tokens=8, priority=p) for name, p in zip("abc", priorities)]
    harness.add(*requests)
    for _ in range(2):
        output, _ = harness.step()
        assert sorted(ids(output)) == ["a", "b", "c"]
    assert harness.kv.num_free_gpu_blocks == 0
    return requests


def test_recompute_preemption_takes_the_latest_arrival_back_to_waiting() -> None:
    harness = Harness(make_scheduler(6, num_cpu_blocks=0))
    a, b, c = three_requests_filling_six_blocks(harness)
    output, _ = harness.step()
    assert ids(output) == ["a", "b"]
    assert output.swap_out == []
    assert c.status is RequestStatus.WAITING and c in harness.scheduler.waiting
    assert c.num_computed_tokens == 0
    assert c.output_token_ids == [100, 101]  # generated tokens are kept and recomputed
    assert c.num_preemptions == 1 and harness.kv.block_table("c") == []
    assert harness.scheduler.counters.recomputed == 1
    harness.run()
    for request in (a, b, c):
        assert request.output_token_ids == list(range(100, 108))
        assert request.finish_reason is FinishReason.LENGTH
    harness.assert_drained()


def test_swap_preemption_round_trips_the_blocks() -> None:
    harness = Harness(make_scheduler(6, num_cpu_blocks=8))
    a, b, c = three_requests_filling_six_blocks(harness)
    gpu_blocks_before = list(harness.kv.block_table("c"))
    output, _ = harness.step()
    assert ids(output) == ["a", "b"]
    assert c.status is RequestStatus.SWAPPED and c.num_computed_tokens == 8
    assert [gpu for gpu, _ in output.swap_out] == gpu_blocks_before
    cpu_blocks = [cpu for _, cpu in output.swap_out]
    assert len(set(cpu_blocks)) == 2 and all(0 <= block < 8 for block in cpu_blocks)
    assert harness.kv.num_used_cpu_blocks == 2

    output = harness.step_until(lambda: c.status is not RequestStatus.SWAPPED)
    assert "c" in ids(output) and c.num_computed_tokens == 9
    c_swap_in = [(cpu, gpu) for cpu, gpu in output.swap_in if cpu in cpu_blocks]
    assert [cpu for cpu, _ in c_swap_in] == cpu_blocks  # same logical order as swapped out
    assert [gpu for _, gpu in c_swap_in] == harness.kv.block_table("c")[:2]
    harness.run()
    assert harness.scheduler.counters.swapped_in == harness.scheduler.counters.swapped_out >= 1
    for request in (a, b, c):
        assert request.output_token_ids == list(range(100, 108))
    harness.assert_drained()


def test_swap_space_too_small_falls_back_to_recompute() -> None:
    harness = Harness(make_scheduler(6, num_cpu_blocks=1))
    _, _, c = three_requests_filling_six_blocks(harness)
    output, _ = harness.step()
    assert output.swap_out == [] and c.status is RequestStatus.WAITING and c.num_computed_tokens == 0
    harness.run()
    assert c.output_token_ids == list(range(100, 108))
    harness.assert_drained()


@pytest.mark.parametrize("policy, victim", [("fcfs", "c"), ("priority", "b")])
def test_preemption_victim_follows_the_policy(policy: str, victim: str) -> None:
    harness = Harness(make_scheduler(6, num_cpu_blocks=8, policy=policy))
    requests = three_requests_filling_six_blocks(harness, priorities=(0, 5, 1))
    output, _ = harness.step()
    preempted = [r.request_id for r in requests if r.status is RequestStatus.SWAPPED]
    assert preempted == [victim]
    assert victim not in ids(output)
    harness.run()
    harness.assert_drained()


@pytest.mark.parametrize("policy, order", [("fcfs", ["low", "high", "mid"]), ("priority", ["high", "mid", "low"])])
def test_admission_order_follows_the_policy(policy: str, order: list[str]) -> None:
    harness = Harness(make_scheduler(max_num_seqs=1, policy=policy))
    harness.add(make_request("low", 8, priority=2), make_request("high", 8, priority=0),
                make_request("mid", 8, priority=1))
    outputs = harness.run()
    admitted = [first_step_scheduling(outputs, name) for name in order]
    assert admitted == sorted(admitted) and len(set(admitted)) == 3
    harness.assert_drained()


# -- infeasible requests ---------------------------------------------------------


def test_request_longer_than_max_model_len_is_refused() -> None:
    scheduler = make_scheduler(max_model_len=32)
    with pytest.raises(InfeasibleRequestError, match=r"\b37\b.*max_model_len \(32\)"):
        scheduler.add_request(make_request("a", 30, max_tokens=7))
    assert not scheduler.has_unfinished()
    scheduler.add_request(make_request("b", 30, max_tokens=2))  # exactly 32 fits


def test_request_needing_more_blocks_than_the_cache_is_refused() -> None:
    scheduler = make_scheduler(7)  # 7 blocks of 4 tokens
    with pytest.raises(InfeasibleRequestError, match=r"needs 11 KV blocks.* 7 usable"):
        scheduler.add_request(make_request("a", 40, max_tokens=2))
    assert not scheduler.has_unfinished() and scheduler.kv.num_free_gpu_blocks == 7


def test_watermark_counts_against_feasibility() -> None:
    scheduler = make_scheduler(10, watermark=0.2)  # 8 usable blocks
    with pytest.raises(InfeasibleRequestError, match=r"needs 9 KV blocks.* 8 usable"):
        scheduler.add_request(make_request("a", 33, max_tokens=2))


# -- aborts ----------------------------------------------------------------------


def test_abort_frees_waiting_running_and_swapped_requests_at_once() -> None:
    harness = Harness(make_scheduler(6, num_cpu_blocks=8))
    a, b, c = three_requests_filling_six_blocks(harness)
    harness.step()  # c is swapped out
    d = make_request("d", 4)
    harness.add(d)
    harness.step()  # d cannot be admitted while c is swapped
    kv, scheduler = harness.kv, harness.scheduler
    assert (a.status, b.status, c.status, d.status) == (
        RequestStatus.RUNNING, RequestStatus.RUNNING, RequestStatus.SWAPPED, RequestStatus.WAITING)

    cpu_used = kv.num_used_cpu_blocks
    assert cpu_used == 2
    assert scheduler.abort("c") is c
    assert kv.num_used_cpu_blocks == 0
    free = kv.num_free_gpu_blocks
    held_by_a = len(kv.block_table("a"))
    assert held_by_a > 0
    scheduler.abort("a")
    assert kv.num_free_gpu_blocks == free + held_by_a
    scheduler.abort("d")
    scheduler.abort("b")
    assert kv.num_free_gpu_blocks == kv.num_gpu_blocks and kv.num_used_cpu_blocks == 0
    assert all(r.status is RequestStatus.FINISHED and r.finish_reason is FinishReason.ABORT for r in (a, b, c, d))
    assert scheduler.abort("a") is None  # already gone
    output = scheduler.schedule()
    assert output.scheduled == [] and output.finished_ids == ["c", "a", "d", "b"]
    assert scheduler.schedule().finished_ids == []
    harness.assert_drained()


def test_abort_while_the_step_runs_drops_its_result() -> None:
    harness = Harness(make_scheduler())
    a, b = make_request("a", 5), make_request("b", 5)
    harness.add(a, b)
    output = harness.scheduler.schedule()
    harness.scheduler.abort("a")
    model_output = ModelOutput(sampled={"a": [100], "b": [100]})
    updates = harness.scheduler.update_from_output(output, model_output)
    assert [u.request.request_id for u in updates] == ["b"]
    assert a.output_token_ids == [] and a.finish_reason is FinishReason.ABORT
    assert harness.kv.block_table("a") == []
    harness.scheduler.check_invariants()
    assert harness.scheduler.schedule().finished_ids == ["a"]
    harness.scheduler.abort("b")
    harness.assert_drained()


# -- stop conditions ---------------------------------------------------------------


def always(token_id: int) -> NextToken:
    return lambda request: token_id


def run_alone(request: Request, next_token: NextToken, **scheduler_options) -> list[RequestUpdate]:
    harness = Harness(make_scheduler(**scheduler_options), next_token)
    harness.add(request)
    updates = []
    for _ in range(100):
        if not harness.scheduler.has_unfinished():
            break
        updates.extend(harness.step()[1])
    harness.assert_drained()
    return updates


def test_eos_stops_the_request() -> None:
    request = make_request("a", 5, max_tokens=10)
    updates = run_alone(request, lambda r: EOS if len(r.output_token_ids) == 2 else 50)
    assert request.output_token_ids == [50, 50, EOS]
    assert request.finish_reason is FinishReason.STOP
    assert [u.finish_reason for u in updates] == [None, None, FinishReason.STOP]
    assert [u.new_token_ids for u in updates] == [[50], [50], [EOS]]


def test_ignore_eos_runs_to_max_tokens() -> None:
    request = make_request("a", 5, max_tokens=5, ignore_eos=True)
    run_alone(request, always(EOS))
    assert request.output_token_ids == [EOS] * 5
    assert request.finish_reason is FinishReason.LENGTH


def test_stop_token_ids_stop_even_with_ignore_eos() -> None:
    request = make_request("a", 5, max_tokens=10, stop_token_ids=[42], ignore_eos=True)
    run_alone(request, lambda r: 42 if len(r.output_token_ids) == 3 else EOS)
    assert request.output_token_ids == [EOS, EOS, EOS, 42]
    assert request.finish_reason is FinishReason.STOP


@pytest.mark.parametrize("stop_token", [EOS, 42])
def test_min_tokens_delays_stop_tokens(stop_token: int) -> None:
    request = make_request("a", 5, max_tokens=10, min_tokens=3, stop_token_ids=[42])
    updates = run_alone(request, always(stop_token))
    assert request.output_token_ids == [stop_token] * 3
    assert [u.finish_reason for u in updates] == [None, None, FinishReason.STOP]


def test_max_tokens_ends_with_length() -> None:
    request = make_request("a", 5, max_tokens=3)
    updates = run_alone(request, counting_tokens)
    assert request.output_token_ids == [100, 101, 102]
    assert updates[-1].finish_reason is FinishReason.LENGTH


def test_reaching_max_model_len_ends_with_length() -> None:
    request = make_request("a", 10, max_tokens=6)
    harness = Harness(make_scheduler(max_model_len=16))
    harness.add(request)
    outputs = harness.run()
    assert request.num_tokens == 16 and request.finish_reason is FinishReason.LENGTH
    assert max(s.start + s.num_new_tokens for o in outputs for s in o.scheduled) < 16
    harness.assert_drained()


def test_tokens_past_a_stop_are_dropped() -> None:
    scheduler = make_scheduler()
    request = make_request("a", 5, max_tokens=10)
    scheduler.add_request(request)
    output = scheduler.schedule()
    [update] = scheduler.update_from_output(output, ModelOutput(sampled={"a": [7, EOS, 9]}))
    assert update.new_token_ids == [7, EOS] and request.output_token_ids == [7, EOS]
    assert update.finish_reason is FinishReason.STOP
    assert scheduler.kv.num_free_gpu_blocks == scheduler.kv.num_gpu_blocks


# -- prefix caching ---------------------------------------------------------------


def test_same_prefix_shares_full_blocks() -> None:
    harness = Harness(make_scheduler(prefix_caching=True))
    prompt = prompt_tokens(18, "shared")
    a = make_request("a", prompt, max_tokens=8)
    harness.add(a)
    harness.step()
    b = make_request("b", prompt, max_tokens=8)
    harness.add(b)
    output, _ = harness.step()
    assert b.num_cached_tokens == 16 and a.num_cached_tokens == 0
    assert ("b", 16, 2) in spans(output)
    shared = harness.kv.block_table("a")[:4]
    assert harness.kv.block_table("b")[:4] == shared
    assert all(harness.kv.gpu_pool.ref_count(block) == 2 for block in shared)
    assert harness.kv.block_table("b")[4] != harness.kv.block_table("a")[4]
    harness.run()
    assert a.output_token_ids == b.output_token_ids == list(range(100, 108))
    harness.assert_drained()


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    harness = Harness(make_scheduler(prefix_caching=True))
    prompt = prompt_tokens(16, "aligned")
    harness.add(make_request("a", prompt))
    harness.step()
    b = make_request("b", prompt)
    harness.add(b)
    output, _ = harness.step()
    assert b.num_cached_tokens == 12
    assert ("b", 12, 4) in spans(output)
    harness.run()
    harness.assert_drained()


def test_a_diverging_prompt_shares_only_the_common_blocks() -> None:
    harness = Harness(make_scheduler(prefix_caching=True))
    prompt = prompt_tokens(20, "common")
    harness.add(make_request("a", prompt))
    harness.step()
    b = make_request("b", prompt[:9] + [1] + prompt[10:])  # differs in the third block
    harness.add(b)
    harness.step()
    assert b.num_cached_tokens == 8
    assert harness.kv.block_table("b")[:2] == harness.kv.block_table("a")[:2]
    assert harness.kv.block_table("b")[2] != harness.kv.block_table("a")[2]
    harness.run()
    harness.assert_drained()


@pytest.mark.parametrize("salt_a, salt_b, cached", [("x", "y", 0), (None, "y", 0), ("x", "x", 16)])
def test_cache_salt_separates_prefixes(salt_a: str | None, salt_b: str | None, cached: int) -> None:
    harness = Harness(make_scheduler(prefix_caching=True))
    prompt = prompt_tokens(18, "salted")
    harness.add(make_request("a", prompt, cache_salt=salt_a))
    harness.step()
    b = make_request("b", prompt, cache_salt=salt_b)
    harness.add(b)
    harness.step()
    assert b.num_cached_tokens == cached
    harness.run()
    harness.assert_drained()


@pytest.mark.parametrize("options", [dict(prefix_caching=False), dict(prefix_caching=True, prompt_logprobs=0)])
def test_prefix_cache_off_or_prompt_logprobs_computes_everything(options: dict) -> None:
    harness = Harness(make_scheduler(prefix_caching=options.pop("prefix_caching")))
    prompt = prompt_tokens(18, "plain")
    harness.add(make_request("a", prompt, **options))
    harness.step()
    b = make_request("b", prompt, **options)
    harness.add(b)
    output, _ = harness.step()
    assert b.num_cached_tokens == 0 and ("b", 0, 18) in spans(output)
    assert not set(harness.kv.block_table("a")) & set(harness.kv.block_table("b"))
    harness.run()
    harness.assert_drained()


def test_finished_blocks_stay_cached_until_reused_least_recently_freed_first() -> None:
    harness = Harness(make_scheduler(8, prefix_caching=True))
    prompt = prompt_tokens(17, "evicted")
    a = make_request("a", prompt, max_tokens=1)
    harness.add(a)
    output, _ = harness.step()
    a_blocks = list(output.scheduled[0].block_table)
    assert a.is_finished and len(a_blocks) == 5 and harness.kv.block_table("a") == []
    assert harness.kv.num_free_gpu_blocks == 8  # free, yet still cached

    # 5 more blocks: the 3 never-used ones, then a's tail (its partial block, then its 4th full block).
    c = make_request("c", 20, max_tokens=1)
    harness.add(c)
    harness.step()
    assert c.is_finished
    assert harness.kv.gpu_pool.lookup(a.block_hashes[3]) is None
    assert all(harness.kv.gpu_pool.lookup(a.block_hashes[i]) == a_blocks[i] for i in range(3))

    b = make_request("b", prompt, max_tokens=1)
    harness.add(b)
    harness.step()
    assert b.num_cached_tokens == 12
    harness.assert_drained()


def test_a_hit_on_a_free_cached_block_counts_it_as_taken() -> None:
    # 6 blocks. a leaves its 2 full blocks cached in the free queue; x then holds the other 4.
    # b shares a's 8-token prefix and needs 2 more blocks: taking the 2 cached ones out of the
    # free queue leaves nothing for those, so b must wait (and still gets the hit later).
    harness = Harness(make_scheduler(6, prefix_caching=True))
    prefix = prompt_tokens(8, "reclaim")
    harness.add(make_request("a", prefix + [3], max_tokens=1))
    harness.step()
    x = make_request("x", 12, max_tokens=3)
    harness.add(x)
    harness.step()
    b = make_request("b", prefix + prompt_tokens(5, "tail"), max_tokens=2)
    harness.add(b)
    output, _ = harness.step()
    assert ids(output) == ["x"] and b.status is RequestStatus.WAITING
    assert len(harness.kv.block_table("x")) == 4 and harness.kv.num_free_gpu_blocks == 2
    harness.run()
    assert b.num_cached_tokens == 8
    harness.assert_drained()


def test_blocks_completed_after_swap_in_are_published() -> None:
    # c is swapped out with 7 computed tokens (its second block is partial); the block fills up
    # after the swap-in and must then be offered to later requests like any other full block.
    harness = Harness(make_scheduler(6, num_cpu_blocks=8, prefix_caching=True))
    requests = [make_request(name, length, max_tokens=8) for name, length in (("a", 7), ("b", 7), ("c", 6))]
    harness.add(*requests)
    c = requests[2]
    harness.step_until(lambda: c.status is RequestStatus.SWAPPED)
    assert c.num_computed_tokens == 7
    harness.step_until(lambda: c.num_computed_tokens >= 8)
    assert c.status is RequestStatus.RUNNING
    probe = make_request("probe", c.all_token_ids[:8] + [1])
    assert harness.kv.cached_prefix(probe) == harness.kv.block_table("c")[:2]
    harness.run()
    harness.assert_drained()


# -- randomized workload --------------------------------------------------------------


def hashed_tokens(request: Request) -> int:
    """A deterministic function of the whole sequence; EOS about one time in eleven."""
    value = zlib.crc32(bytes(str(request.all_token_ids), "ascii"))
    return EOS if value % 11 == 0 else 3 + value % 60


@pytest.mark.parametrize("seed", range(24))
def test_random_workload(seed: int) -> None:
    rng = random.Random(seed)
    num_gpu_blocks = rng.randrange(6, 20)
    scheduler = make_scheduler(num_gpu_blocks, num_cpu_blocks=rng.choice([0, 4, 16]),
                               prefix_caching=rng.random() < 0.6, watermark=rng.choice([0.0, 0.1]),
                               max_model_len=rng.choice([24, 64]), max_num_seqs=rng.randrange(1, 9),
                               max_num_batched_tokens=rng.randrange(4, 48),
                               policy=rng.choice(["fcfs", "priority"]))
    harness = Harness(scheduler, hashed_tokens)
    kv, config = scheduler.kv, scheduler.config
    prefixes = [prompt_tokens(rng.randrange(1, 14), f"{seed}-{i}") for i in range(3)]
    added: list[Request] = []
    aborted: set[str] = set()
    for index in range(40):
        if rng.random() < 0.7:
            prompt = rng.choice(prefixes) + prompt_tokens(rng.randrange(1, 12), f"{seed}:{index}")
            request = make_request(f"r{index}", prompt, max_tokens=rng.randrange(1, 16),
                                   priority=rng.randrange(3),
                                   cache_salt=rng.choice([None, None, "s"]))
            total = request.num_prompt_tokens + request.max_tokens
            feasible = (total <= config.max_model_len
                        and blocks_for_tokens(total, BLOCK) <= num_gpu_blocks - kv.watermark_blocks)
            if feasible:
                harness.add(request)
                added.append(request)
            else:
                with pytest.raises(InfeasibleRequestError):
                    harness.add(request)
        live = [r for r in added if not r.is_finished]
        if live and rng.random() < 0.1:
            victim = rng.choice(live)
            scheduler.abort(victim.request_id)
            aborted.add(victim.request_id)
        harness.step()
    harness.run()
    harness.assert_drained()
    for request in added:
        expected: list[int] = []
        probe = Request("probe", request.prompt_token_ids, request.params)
        while len(expected) < len(request.output_token_ids):
            expected.append(hashed_tokens(probe))
            probe.output_token_ids = list(expected)
        assert request.output_token_ids == expected  # same tokens whatever the scheduling
        if request.request_id in aborted:
            assert request.finish_reason is FinishReason.ABORT
        elif request.output_token_ids[-1] == EOS:
            assert request.finish_reason is FinishReason.STOP
        else:
            assert request.finish_reason is FinishReason.LENGTH
            assert len(request.output_token_ids) == request.max_tokens
    assert sorted(harness.finished_ids + scheduler.schedule().finished_ids) == sorted(r.request_id for r in added)
