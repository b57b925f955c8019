"""Iteration-level scheduling over the paged KV cache.

Each step: running requests first (best priority first), preempting the worst
running request when blocks run out; then swapped requests come back; then
waiting requests are admitted while free blocks (above a watermark), the token
budget and the sequence limit allow. Long prompts are chunked by the budget.

With speculation, a decoding request's step is its last token plus K draft
tokens (K from SpeculationPolicy); slots are reserved for all of them and
rejected positions are given back after the step by moving counters back.

Scheduling ahead: while step N runs, step N+1 can be scheduled before N's
tokens are known (`schedule(in_flight=N)`), so the host work of N+1 overlaps
N on the device. Each request of N counts as if N had completed: its
positions computed, and a token it samples known, though only the device
has it yet. Requests that N takes to max_tokens are left out; one that N
ends by a stop token runs one wasted position, dropped in update. Scheduled
ahead, nothing is preempted (a victim may be in flight): a request that
cannot grow waits, and the step says so (`needs_preemption`), so the next is
scheduled after the results. Speculating steps (unless the policy would
give the next step no drafts) and samplers that read the output history
(penalties, min_tokens) need the results first (`can_schedule_ahead`).
Updates must still be applied in step order.

Multi-step (`num_scheduler_steps` > 1): a step in which every request only
decodes (one known token, no drafts, a sampler that does not read the
output) decodes up to that many tokens per request in one go; the host
schedules, applies results and checks stops once per multi-step. A request
gets fewer where max_tokens, max_model_len or free blocks allow fewer. Stop
tokens end a request when its tokens are applied; tokens decoded past them
are dropped, as rejected drafts are. A step in which every request verifies
the same K drafts of the draft model greedily chains up to that many
speculative rounds instead: slots are reserved for every round accepting
everything, and those a round rejects are given back once the results are
applied (`kv.truncate`), as for a single verify.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from helix.request_limits import check_fits
from helix.block_manager.kv_cache_manager import KVCacheManager
from helix.scheduler.config import SchedulerConfig
from helix.scheduler.outputs import ModelOutput, RequestUpdate, ScheduledRequest, SchedulerOutput
from helix.scheduler.request import FinishReason, Request, RequestStatus
from helix.scheduler.speculation import Decoding, SpecCounters, SpeculationPolicy, StepPlan


@dataclass
class SchedulerCounters:
    preemptions: int = 0
    swapped_out: int = 0
    swapped_in: int = 0
    recomputed: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager,
                 speculation: SpeculationPolicy | None = None, has_draft_cache: bool = False):
        self.config = config
        self.kv = kv
        self.speculation = speculation
        self.spec_counters = SpecCounters()
        # With a draft model, a block is only published to the prefix cache once
        # both models' K/V in it are computed.
        self.has_draft_cache = has_draft_cache
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.counters = SchedulerCounters()
        self._arrivals = itertools.count()
        self._finished_since_last_step: list[str] = []

    # -- requests in and out -----------------------------------------------
    def add_request(self, request: Request) -> None:
        self.check_feasible(request)
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        request.arrival_index = next(self._arrivals)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def check_feasible(self, request: Request) -> None:
        """Refuse requests that could never finish, instead of letting them wait forever."""
        check_fits(request.num_prompt_tokens, request.max_tokens, self.config.max_model_len, self.kv.block_size,
                   self.usable_blocks)

    @property
    def usable_blocks(self) -> int:
        """KV blocks one request may hold: the cache less its watermark."""
        return self.kv.num_gpu_blocks - self.kv.watermark_blocks

    def abort(self, request_id: str) -> Request | None:
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, FinishReason.ABORT)
        return request

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- scheduling ----------------------------------------------------------
    def _order(self, request: Request) -> tuple[int, int]:
        priority = request.priority if self.config.policy == "priority" else 0
        return priority, request.arrival_index

    def can_schedule_ahead(self, in_flight: SchedulerOutput) -> bool:
        """Whether the next step may be scheduled before `in_flight`'s results."""
        if self._speculates_next(in_flight):
            return False
        if in_flight.needs_preemption:
            return False
        return not any(item.samples and item.request.sampler_reads_output for item in in_flight.scheduled)

    def _speculates_next(self, in_flight: SchedulerOutput) -> bool:
        """Whether `in_flight` verified drafts or the next step would propose some.
        A step the policy gives no drafts is plain decoding, which can be
        scheduled ahead; the draft model catches up once drafts come back.
        Seeded requests keep their K whatever the policy says."""
        if self.speculation is None or not self.speculation.config.enabled:
            return False
        if any(item.num_spec_tokens for item in in_flight.scheduled):
            return True
        # Who decodes once it completes, a request whose prompt it finishes included
        # (the plan does not depend on their order).
        decoding = self._decoding(self.running, _InFlight.of(in_flight))
        return (self.speculation.plan(decoding) > 0
                or any(request.params.seed is not None and limit > 0 for request, limit in decoding))

    def schedule(self, in_flight: SchedulerOutput | None = None) -> SchedulerOutput:
        """The next step; `in_flight`: the step still running, whose results are not applied yet."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        swap_out: list[tuple[int, int]] = []
        swap_in: list[tuple[int, int]] = []
        ahead = _InFlight.of(in_flight)
        queue = sorted(self.running, key=self._order)
        spec, plan = self._speculation_choices(queue)
        preempted, blocked = self._schedule_running(queue, spec if ahead is None else {}, scheduled, swap_out,
                                                    budget, ahead)
        budget -= sum(s.num_new_tokens for s in scheduled)
        if not preempted:
            budget = self._schedule_swapped(scheduled, swap_in, budget)
            if not self.swapped:
                self._schedule_waiting(scheduled, budget)
        if not (preempted or blocked or swap_in):
            scheduled = self._multi_step(scheduled, ahead)
        finished, self._finished_since_last_step = self._finished_since_last_step, []
        return SchedulerOutput(scheduled, swap_out, swap_in, finished, needs_preemption=blocked,
                               spec_plan=self._steady(plan, scheduled))

    def _schedule_running(self, queue: list[Request], spec: dict[Request, int], scheduled: list[ScheduledRequest],
                          swap_out: list[tuple[int, int]], budget: int,
                          ahead: _InFlight | None) -> tuple[bool, bool]:
        """Grow every running request of `queue` (in priority order) by its next chunk,
        plus its `spec` drafts; preempt when blocks run out (scheduled ahead: stop
        instead). Returns (preempted, blocked)."""
        preempted = False
        position = 0
        while position < len(queue) and budget > 0:
            request = queue[position]
            computed, known = _InFlight.progress_of(request, ahead)
            if ahead is not None and ahead.ends(request, self.config.max_model_len):
                position += 1
                continue
            num_spec = min(spec.get(request, 0), budget - 1)
            num_new = min(known - computed + num_spec, budget)
            if self.kv.grow(request, computed + num_new):
                scheduled.append(ScheduledRequest(request, computed, num_new,
                                                  tuple(self.kv.block_table(request.request_id)), num_spec,
                                                  samples=computed + num_new - num_spec == known))
                budget -= num_new
                position += 1
                continue
            if ahead is not None:
                return False, True
            victim = queue.pop()  # the worst priority, then the latest arrival
            self._preempt(victim, swap_out)
            preempted = True
        return preempted, False

    def _multi_step(self, scheduled: list[ScheduledRequest], ahead: _InFlight | None) -> list[ScheduledRequest]:
        """`scheduled` as a multi-step where it allows one: every request decodes
        (see the module docstring), each taking as many tokens as max_tokens,
        max_model_len and free blocks leave it, up to num_scheduler_steps."""
        most = self.config.num_scheduler_steps
        if most == 1 or not scheduled:
            return scheduled
        if self._chains_rounds(scheduled):
            return self._chained_rounds(scheduled)
        if not all(_decodes_plainly(item) for item in scheduled):
            return scheduled
        multi = []
        for item in scheduled:
            request = item.request
            known = _InFlight.progress_of(request, ahead)[1]
            num_output = len(request.output_token_ids) + known - request.num_tokens  # with tokens in flight
            num_steps = min(most, request.max_tokens - num_output, self.config.max_model_len - known)
            if num_steps > 1 and self.kv.grow(request, item.start + num_steps):
                item = replace(item, block_table=tuple(self.kv.block_table(request.request_id)), num_steps=num_steps)
            multi.append(item)
        return multi

    def _chains_rounds(self, scheduled: list[ScheduledRequest]) -> bool:
        """Whether the step's speculative rounds can be chained on the device: a
        draft model proposes, the batch is at most max_chained_seqs, and every
        request verifies the same K greedily, with no logprobs and no logit
        edits (the device decides how many drafts each round keeps, by the
        argmax of the raw logits)."""
        k, most = scheduled[0].num_spec_tokens, self.config.max_chained_seqs
        return self.has_draft_cache and k > 0 and (most is None or len(scheduled) <= most) and all(
            item.num_spec_tokens == k and item.num_new_tokens == 1 + k and item.samples
            and item.request.params.greedy and item.request.params.logprobs is None
            and not item.request.params.logit_bias and not item.request.sampler_reads_output for item in scheduled)

    def _chained_rounds(self, scheduled: list[ScheduledRequest]) -> list[ScheduledRequest]:
        """The same number of rounds for every request (the device advances them in
        lockstep), up to num_scheduler_steps: as many as max_tokens (each round
        emits at least one token), max_model_len and free blocks allow every
        request, and no more than the longest is expected to need (a round
        past a request's last token runs all the same), slots reserved for the
        most they can emit (all drafts accepted)."""
        k = scheduled[0].num_spec_tokens
        per_round = 1 + k
        num_rounds = min(min(item.request.max_tokens - len(item.request.output_token_ids),
                             (self.config.max_model_len - item.start) // per_round) for item in scheduled)
        num_rounds = min(num_rounds, self.config.num_scheduler_steps, self._rounds_expected(scheduled, k))
        # Slots grown for earlier requests when a later one cannot grow are given back
        # after the step, with its rejected drafts.
        if num_rounds < 2 or not all(self.kv.grow(item.request, item.start + num_rounds * per_round)
                                     for item in scheduled):
            return scheduled
        return [replace(item, block_table=tuple(self.kv.block_table(item.request.request_id)), num_steps=num_rounds)
                for item in scheduled]

    def _rounds_expected(self, items: list[ScheduledRequest], k: int) -> int:
        """The most rounds of K drafts any of the items' requests is expected to
        need for the rest of its max_tokens (from its output so far)."""
        assert self.speculation is not None  # chained rounds come with a draft model
        return max(self.speculation.rounds_needed(item.request, k,
                                                  item.request.max_tokens - len(item.request.output_token_ids))
                   for item in items)

    def _speculation_choices(self, queue: list[Request]) -> tuple[dict[Request, int], StepPlan | None]:
        """K per decoding request, and the step's plan (None without speculation)."""
        if self.speculation is None or not self.speculation.config.enabled:
            return {}, None
        return self.speculation.choose(self._decoding(queue))

    def _steady(self, plan: StepPlan | None, scheduled: list[ScheduledRequest]) -> StepPlan | None:
        """`plan`, marked unsteady if a request drafts with its draft model more than
        two tokens behind: after a verify it is one or two behind, so this step's
        first draft pass also catches up on steps that ran without drafts."""
        if plan is None or not self.has_draft_cache:
            return plan
        return replace(plan, steady=all(item.request.num_tokens - item.request.num_draft_computed_tokens <= 2
                                        for item in scheduled if item.num_spec_tokens))

    def _decoding(self, queue: list[Request], ahead: _InFlight | None = None) -> Decoding:
        """The requests of `queue` with exactly one token to compute (those that
        can speculate), each with the most drafts it may take: never slots for
        drafts that max_tokens or max_model_len would cut off. `ahead`: counted
        as after that step in flight."""
        decoding = []
        for request in queue:
            computed, known = _InFlight.progress_of(request, ahead)
            if known - computed == 1:
                num_output = len(request.output_token_ids) + known - request.num_tokens
                decoding.append((request, min(request.max_tokens - num_output - 1, self.config.max_model_len - known)))
        return decoding

    def _schedule_swapped(self, scheduled: list[ScheduledRequest], swap_in: list[tuple[int, int]],
                          budget: int) -> int:
        for request in sorted(self.swapped, key=self._order):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            # Swap in only what also runs now; otherwise it would be swapped straight back out.
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self.kv.can_swap_in(request, request.num_computed_tokens + num_new):
                break
            swap_in.extend(self.kv.swap_in(request))
            self.swapped.remove(request)
            self._run(request)
            self.counters.swapped_in += 1
            if self.kv.grow(request, request.num_computed_tokens + num_new):
                scheduled.append(self._scheduled(request, num_new))
                budget -= num_new
        return budget

    def _schedule_waiting(self, scheduled: list[ScheduledRequest], budget: int) -> None:
        self.waiting.sort(key=self._order)
        deferred: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if self._leader_still_prefilling(request):
                deferred.append(self.waiting.pop(0))
                continue
            cached_blocks = self.kv.cached_prefix(request)
            num_cached = len(cached_blocks) * self.kv.block_size
            num_new = min(request.num_tokens - num_cached, budget)
            if not self.kv.admit(request, cached_blocks, num_new):
                break  # first come, first served: nobody overtakes the head of the queue
            self.waiting.pop(0)
            request.num_computed_tokens = num_cached
            request.num_draft_computed_tokens = num_cached  # published blocks hold both models' K/V
            if request.num_preemptions == 0:
                request.num_cached_tokens = num_cached
            self._run(request)
            scheduled.append(self._scheduled(request, num_new))
            budget -= num_new
        self.waiting[:0] = deferred

    def _leader_still_prefilling(self, request: Request) -> bool:
        """Siblings of an n > 1 request wait for the first one's prompt, then share
        its blocks through the prefix cache instead of computing the prompt again."""
        leader = request.prefix_leader
        return (self.kv.enable_prefix_caching and leader is not None and not leader.is_finished
                and leader.num_computed_tokens < leader.num_prompt_tokens)

    def _scheduled(self, request: Request, num_new: int) -> ScheduledRequest:
        """A request with nothing in flight: `num_new` of its known tokens."""
        start = request.num_computed_tokens
        return ScheduledRequest(request, start, num_new, tuple(self.kv.block_table(request.request_id)),
                                samples=start + num_new == request.num_tokens)

    def _run(self, request: Request) -> None:
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _preempt(self, request: Request, swap_out: list[tuple[int, int]]) -> None:
        """Swap the request's KV to CPU, or drop it to be recomputed when swap space is full."""
        self.running.remove(request)
        request.num_preemptions += 1
        self.counters.preemptions += 1
        if self.kv.can_swap_out(request):
            swap_out.extend(self.kv.swap_out(request))
            request.status = RequestStatus.SWAPPED
            self.swapped.append(request)
            self.counters.swapped_out += 1
        else:
            self.kv.free(request)
            request.num_computed_tokens = 0
            request.num_draft_computed_tokens = 0
            request.status = RequestStatus.WAITING
            self.waiting.append(request)
            self.counters.recomputed += 1

    # -- results ---------------------------------------------------------------
    def update_from_output(self, output: SchedulerOutput, model_output: ModelOutput) -> list[RequestUpdate]:
        updates = []
        if output.spec_plan is not None and output.spec_plan.num_decoding:
            self.spec_counters.record_step(output.spec_plan.k)
        for item in output.scheduled:
            request = item.request
            if request.is_finished:
                continue  # aborted while the step ran
            request_id = request.request_id
            verifies = model_output.verifies.get(request_id, [])
            accepted = sum(count for _, count in verifies)
            # Rejected draft positions are dropped by not counting them. A step
            # computes its known token and each later step's (fed) token, plus
            # the accepted drafts.
            request.num_computed_tokens += item.num_new_tokens + item.num_steps - 1 - item.num_spec_tokens + accepted
            request.num_draft_computed_tokens = min(
                model_output.draft_computed.get(request_id, request.num_draft_computed_tokens),
                request.num_computed_tokens)
            self.kv.commit_computed_blocks(request, self._num_cacheable_tokens(request))
            request.prompt_logprobs.extend(model_output.prompt_logprobs.get(request_id, []))
            new_tokens = self._append_tokens(request, model_output.sampled.get(request_id, []))
            self._observe_speculation(request, verifies, len(new_tokens))
            if item.num_spec_tokens and not request.is_finished:
                self.kv.truncate(request, request.num_computed_tokens)  # return blocks of rejected drafts
            request.logprobs.extend(model_output.logprobs.get(request.request_id, [])[:len(new_tokens)])
            if new_tokens:
                updates.append(RequestUpdate(request, new_tokens, request.finish_reason))
        if self.config.check_invariants:
            self.check_invariants()
        return updates

    def observe_step_period(self, output: SchedulerOutput, seconds: float) -> None:
        """A finished step's wall period, for adaptive speculation. Only steps where
        every request decodes say what a K costs: without a decoding request
        (scheduled ahead, a step can be empty) they say nothing about K, a
        prompt chunk's cost is not K's, nor is a swap. A multi-step counts
        as its positions' (K = 0) or rounds' share each: plain decoding costs
        that per token, and speculation per verify."""
        if self.speculation is None or output.spec_plan is None or output.swap_in or output.swap_out:
            return
        if output.only_decodes:
            positions = max(item.num_steps for item in output.scheduled)
            self.speculation.observe_step(output.spec_plan, seconds, positions)

    def _observe_speculation(self, request: Request, verifies: list[tuple[int, int]], emitted: int) -> None:
        if self.speculation is None:
            return
        if not any(proposed > 0 for proposed, _ in verifies):
            self.speculation.fade(request, emitted)
            return
        for proposed, accepted in verifies:
            self.speculation.observe(request, proposed, accepted)
            request.num_draft_tokens += proposed
            request.num_accepted_tokens += accepted
            self.spec_counters.record(proposed, accepted)
        self.spec_counters.record_past_stop(verifies, emitted)

    def _num_cacheable_tokens(self, request: Request) -> int:
        if self.has_draft_cache:
            return min(request.num_computed_tokens, request.num_draft_computed_tokens)
        return request.num_computed_tokens

    def _append_tokens(self, request: Request, token_ids: list[int]) -> list[int]:
        """Append tokens until a stop condition; tokens past the stop are dropped."""
        appended = []
        for token_id in token_ids:
            request.output_token_ids.append(token_id)
            if request.grammar is not None:
                request.grammar.consume(token_id)
            appended.append(token_id)
            reason = self._stop_reason(request, token_id)
            if reason is not None:
                self._finish(request, reason)
                break
        return appended

    def _stop_reason(self, request: Request, token_id: int) -> FinishReason | None:
        num_output = len(request.output_token_ids)
        params = request.params
        if num_output >= params.min_tokens and token_id in request.stop_token_set:
            return FinishReason.STOP
        if request.grammar is not None and request.grammar.finished:
            return FinishReason.STOP  # the document is complete (or the grammar failed)
        if num_output >= request.max_tokens or request.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None

    def finish(self, request_id: str, reason: FinishReason) -> None:
        """End a request from outside (a stop string matched in its text)."""
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, reason)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        if request.is_finished:
            return
        for queue in (self.waiting, self.running, self.swapped):
            if request in queue:
                queue.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        del self.requests[request.request_id]
        self._finished_since_last_step.append(request.request_id)

    # -- accounting ------------------------------------------------------------
    def check_invariants(self) -> None:
        """Every held block belongs to a live request; nothing is lost or double-held."""
        self.kv.check_invariants()
        held = sum(len(self.kv.block_table(r)) for r in self.requests)
        if held < self.kv.num_gpu_blocks - self.kv.num_free_gpu_blocks:
            raise AssertionError("GPU blocks are held by no live request (leak)")
        if not self.requests and self.kv.num_free_gpu_blocks != self.kv.num_gpu_blocks:
            raise AssertionError("no requests, yet GPU blocks are held")
        if not self.swapped and self.kv.num_used_cpu_blocks:
            raise AssertionError("no swapped requests, yet CPU swap blocks are held")


def _decodes_plainly(item: ScheduledRequest) -> bool:
    """One known token to compute and sample from, no drafts, and a sampler
    that does not read the output (so later tokens need not reach the host)."""
    return (item.num_new_tokens == 1 and item.samples and not item.num_spec_tokens
            and not item.request.sampler_reads_output)


@dataclass(frozen=True)
class _InFlight:
    """What a step still running will add, per request: positions computed and tokens sampled."""

    computed: dict[str, int]
    sampled: dict[str, int]

    @classmethod
    def of(cls, step: SchedulerOutput | None) -> _InFlight | None:
        if step is None:
            return None
        return cls({item.request.request_id: item.num_new_tokens + item.num_steps - 1 for item in step.scheduled},
                   {item.request.request_id: item.num_steps for item in step.scheduled if item.samples})

    def progress(self, request: Request) -> tuple[int, int]:
        """(computed, known) positions once the step completes."""
        request_id = request.request_id
        return (request.num_computed_tokens + self.computed.get(request_id, 0),
                request.num_tokens + self.sampled.get(request_id, 0))

    @staticmethod
    def progress_of(request: Request, ahead: _InFlight | None) -> tuple[int, int]:
        """(computed, known) positions once `ahead` completes; now, without a step in flight."""
        if ahead is None:
            return request.num_computed_tokens, request.num_tokens
        return ahead.progress(request)

    def ends(self, request: Request, max_model_len: int) -> bool:
        """Whether the step's tokens take the request to max_tokens or max_model_len."""
        count = self.sampled.get(request.request_id, 0)
        if not count:
            return False
        return (len(request.output_token_ids) + count >= request.max_tokens
                or request.num_tokens + count >= max_model_len)
