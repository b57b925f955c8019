"""EngineCore: load a model, then schedule -> execute -> update, one step at a time.

Synchronous and single-threaded by design. Other threads talk to it only
through `add_request` and `abort`, which validate immediately and queue the
change; the queue is drained at the start of the next step, on the step's
thread, so scheduler state has exactly one writer.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoTokenizer, GenerationConfig

from helix.block_manager.kv_cache_manager import KVCacheManager
from helix.engine_args import EngineArgs
from helix.output_processor import OutputProcessor, child_request_id
from helix.outputs import RequestOutput
from helix.request_limits import RequestLimits
from helix.sampling_params import SamplingParams
from helix.scheduler.config import SchedulerConfig
from helix.scheduler.outputs import ModelOutput, RequestUpdate, SchedulerOutput
from helix.scheduler.request import FinishReason, Request
from helix.scheduler.scheduler import Scheduler
from helix.scheduler.speculation import SpeculationConfig, SpeculationPolicy
from helix.structured_output import GrammarCompiler
from helix.worker.cuda_graphs import DecodeGraphSpec
from helix.worker.device import resolve_device, resolve_dtype
from helix.worker.kv_cache import bytes_per_block, num_blocks_for_budget, num_swap_blocks
from helix.worker.model_runner import ModelRunner
from helix.worker.models import ArchConfig, LlamaForCausalLM, build_model, model_source
from helix.worker.spec_decode.compat import check_draft_compatible
from helix.worker.spec_decode.draft_proposer import DraftModelProposer
from helix.worker.spec_decode.ngram_proposer import NgramProposer
from helix.worker.spec_decode.rejection_sampler import Acceptance, ExactAcceptance
from helix.worker.spec_decode.synthetic import SyntheticAcceptance
from helix.worker.warm_up import warm_up_attention

logger = logging.getLogger(__name__)
_RATE_WINDOW_S = 10.0


class EngineCore:
    def __init__(self, args: EngineArgs, stream_outputs: bool = True):
        """stream_outputs=False: `step` returns only finished outputs (offline use)."""
        self.args = args
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device)
        source = model_source(args.target_path, args.load_format)
        self.arch = ArchConfig.from_hf(source.hf_config)
        self.tokenizer = load_tokenizer(source.directory)
        self.eos_token_ids = _eos_token_ids(source, self.tokenizer)
        self.grammars = GrammarCompiler(self.tokenizer)  # structured outputs' matchers
        self.max_model_len = _max_model_len(args.max_model_len, self.arch)
        model = build_model(source, args.load_format, self.device, self.dtype, args.seed)
        draft = self._load_draft()
        self.speculation = SpeculationConfig(
            method=args.method, num_speculative_tokens=args.num_speculative_tokens, mode=args.speculation_mode)
        num_gpu_blocks, num_cpu_blocks = self._cache_sizes(draft)
        self.graphs = None if args.enforce_eager else DecodeGraphSpec(
            args.max_num_seqs, self.max_model_len,
            1 + self.speculation.num_speculative_tokens if self.speculation.enabled else 1,
            # Fixed K too takes every K up to K_max: a request's limit may cap it.
            tuple(range(1, self.speculation.num_speculative_tokens + 1)) if draft is not None else (),
            args.num_scheduler_steps)
        proposer = self._proposer(draft, num_gpu_blocks, num_cpu_blocks)
        self.runner = ModelRunner(model, num_gpu_blocks, num_cpu_blocks, args.block_size, self.device,
                                  self.dtype, args.seed, proposer, self.graphs, self._acceptance())
        if self.device.type == "cuda":  # compile now what the first requests would wait for
            warm_up_attention(model, self.runner.kv_cache, args.block_size, self.max_model_len, "target")
            if isinstance(proposer, DraftModelProposer):
                warm_up_attention(proposer.model, proposer.kv_cache, args.block_size, self.max_model_len, "draft")
        self.scheduler_config = SchedulerConfig(
            max_model_len=self.max_model_len, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, policy=args.scheduling_policy,
            check_invariants=args.check_invariants, num_scheduler_steps=args.num_scheduler_steps,
            max_chained_seqs=self._max_chained_seqs())
        self.kv = KVCacheManager(num_gpu_blocks, num_cpu_blocks, args.block_size, args.enable_prefix_caching,
                                 watermark=self.scheduler_config.watermark)
        self.scheduler = Scheduler(self.scheduler_config, self.kv, SpeculationPolicy(self.speculation),
                                   has_draft_cache=draft is not None)
        self.outputs = OutputProcessor(self.tokenizer, self.scheduler.finish, stream_outputs)
        self.limits = RequestLimits(self.arch.vocab_size, self.max_model_len, args.block_size,
                                    self.scheduler.usable_blocks)
        self.tokenizer_dir = source.directory  # where the tokenizer was loaded from (None: no tokenizer)
        self._pending: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.async_scheduling = (self.device.type == "cuda" if args.async_scheduling is None
                                 else args.async_scheduling)
        # The step launched last, whose results are not read yet.
        self._in_flight: _LaunchedStep | None = None
        self._completed_at = 0.0  # time.perf_counter() when the last step's results were read
        # The last step's updates, turned into outputs while the next step runs.
        self._unprocessed: tuple[SchedulerOutput, list[RequestUpdate]] | None = None
        self._counters = {"prompt_tokens": 0, "generation_tokens": 0, "requests_finished": 0}
        self._rate_window: list[tuple[float, int, int]] = []
        logger.info("engine ready: %s on %s (%s), %d KV blocks of %d tokens, %d swap blocks, speculation: %s",
                    self.arch.architecture, self.device, self.dtype, num_gpu_blocks, args.block_size,
                    num_cpu_blocks, self.speculation.method or "off")

    def _load_draft(self) -> LlamaForCausalLM | None:
        args = self.args
        if args.method == "draft" and args.draft_path is None:
            raise ValueError("speculative_method: 'draft' needs a draft_model")
        if args.method != "draft":
            if args.draft_model is not None:
                raise ValueError(f"draft_model: not used by speculative_method={args.method!r}")
            return None
        source = model_source(args.draft_path, args.load_format)
        draft_arch = ArchConfig.from_hf(source.hf_config)
        check_draft_compatible(self.arch, draft_arch, self.tokenizer, source.directory)
        return build_model(source, args.load_format, self.device, self.dtype, args.seed + 1)

    def _cache_sizes(self, draft: LlamaForCausalLM | None) -> tuple[int, int]:
        """GPU and CPU-swap block counts; a block holds both models' K/V for its tokens."""
        block_bytes = bytes_per_block(self.arch, self.args.block_size, self.dtype)
        if draft is not None:
            block_bytes += bytes_per_block(draft.arch, self.args.block_size, self.dtype)
        num_gpu_blocks = num_blocks_for_budget(self.args, block_bytes, self.device)
        return num_gpu_blocks, num_swap_blocks(self.args.swap_space, num_gpu_blocks, block_bytes)

    def _max_chained_seqs(self) -> int | None:
        """Chained speculative rounds run without the host where the verify graphs
        cover the batch; eager rounds on an accelerator would each wait for the
        host to read the shift, so none chain there. On the CPU reading it costs
        nothing: any batch chains."""
        if self.device.type == "cpu":
            return None
        graphs = self.runner.graphs
        if graphs is None or not self.speculation.enabled:
            return 0
        return graphs.buckets[graphs.max_query_len][-1]

    def _acceptance(self) -> Acceptance:
        rate = self.args.spec_synthetic_acceptance
        if rate is None:
            return ExactAcceptance()
        if not self.speculation.enabled:
            raise ValueError("spec_synthetic_acceptance: needs speculative decoding (a draft model or ngram)")
        logger.warning("benchmark mode: draft tokens are accepted by a coin of probability %.2f, not by the "
                       "model; outputs are not the model's", rate)
        return SyntheticAcceptance(rate, self.args.seed, self.device)

    def _proposer(self, draft: LlamaForCausalLM | None, num_gpu_blocks: int,
                  num_cpu_blocks: int) -> DraftModelProposer | NgramProposer | None:
        if draft is not None:
            return DraftModelProposer(draft, num_gpu_blocks, num_cpu_blocks, self.args.block_size, self.device,
                                      self.dtype, self.graphs)
        return NgramProposer() if self.speculation.method == "ngram" else None

    # -- requests (any thread) -------------------------------------------------
    def make_requests(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                      priority: int = 0, cache_salt: str | None = None) -> list[Request]:
        """Validate one request and expand it into its n child requests."""
        params = self.limits.check(prompt_token_ids, params)
        children = []
        for index in range(params.n):
            seed = None if params.seed is None else params.seed + index
            child_params = replace(params, n=1, seed=seed)
            grammar = self.grammars.matcher(params.structured_outputs) if params.structured_outputs else None
            child = Request(child_request_id(request_id, index, params.n), list(prompt_token_ids), child_params,
                            eos_token_ids=self.eos_token_ids, priority=priority, cache_salt=cache_salt,
                            prefix_leader=children[0] if children else None, grammar=grammar)
            children.append(child)
        return children

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None, priority: int = 0, cache_salt: str | None = None) -> None:
        children = self.make_requests(request_id, prompt_token_ids, params, priority, cache_salt)
        self._pending.put(("add", (request_id, prompt, children)))

    def abort(self, request_id: str) -> None:
        self._pending.put(("abort", request_id))

    # -- the step (one thread) ---------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule and launch a step, then turn the previous step's tokens into
        outputs (detokenization, stop strings) while the GPU works.

        Each step is left in flight: the next call reads its tokens back,
        either before scheduling (the next step needs them) or, scheduling
        ahead, after launching the next step, so the device always has the next
        step queued. Outputs trail their step by one call; a stop string found
        then ends its request, and a position already launched for it is dropped."""
        outputs = self._apply_pending()
        previous, self._in_flight = self._in_flight, None
        if previous is not None and not (self.async_scheduling and
                                         self.scheduler.can_schedule_ahead(previous.scheduled)):
            outputs += self._process(self._unprocessed)
            failed = self._complete(previous)
            if failed is not None:
                return outputs + failed
            previous = None
        scheduled_at = time.perf_counter()
        scheduled = self.scheduler.schedule(in_flight=previous.scheduled if previous else None)
        try:
            finish = self.runner.launch(scheduled)
        except torch.OutOfMemoryError as error:
            if previous is not None:  # its results stand; the step scheduled ahead of them is dropped
                outputs += self._process(self._unprocessed)
                outputs += self._complete(previous) or []
            return outputs + self._fail_out_of_memory(scheduled, error)
        outputs += self._process(self._unprocessed)
        self._in_flight = _LaunchedStep(scheduled, finish, scheduled_at)
        if previous is not None:
            failed = self._complete(previous)
            if failed is not None:
                return outputs + failed
        if not self.scheduler.has_unfinished():  # nothing will run next: deliver now
            outputs += self._process(self._unprocessed)
            outputs += self._complete(self._in_flight, timed=False) or []
            outputs += self._process(self._unprocessed)
        return outputs

    def _complete(self, launched: _LaunchedStep, timed: bool = True) -> list[RequestOutput] | None:
        """Read a launched step's results and apply them, leaving its updates to process.
        Out of memory: drop it, and the step in flight scheduled ahead of it, and
        fail its largest request (the returned outputs). `timed=False`: read at
        once after the launch, so its period would be a fragment."""
        if launched is self._in_flight:
            self._in_flight = None
        try:
            model_output = launched.finish()
        except torch.OutOfMemoryError as error:
            if self._in_flight is not None:  # scheduled on this step's results, which are now dropped
                _wait_discarding(self._in_flight)
                self._in_flight = None
            return self._fail_out_of_memory(launched.scheduled, error)
        if timed:
            self._observe_period(launched)
        self._unprocessed = (launched.scheduled, self.scheduler.update_from_output(launched.scheduled, model_output))
        return None

    def _observe_period(self, launched: _LaunchedStep) -> None:
        """Report the step's wall period: from its scheduling, or, scheduled ahead,
        from the previous step's results, to its own results. This is the time
        the step adds to a stream of steps, which its passes alone do not say."""
        now = time.perf_counter()
        self.scheduler.observe_step_period(launched.scheduled, now - max(launched.scheduled_at, self._completed_at))
        self._completed_at = now

    def _process(self, step: tuple[SchedulerOutput, list[RequestUpdate]] | None) -> list[RequestOutput]:
        self._unprocessed = None
        if step is None:
            return []
        scheduled, updates = step
        outputs = self.outputs.process(updates)
        self._count(scheduled, updates, outputs)
        return outputs

    def _fail_out_of_memory(self, scheduled: SchedulerOutput, error: torch.OutOfMemoryError) -> list[RequestOutput]:
        """Fail the request with the largest share of the step. The others run the
        same tokens again next step: counters only move in update_from_output, and
        the slots reserved for this step stay theirs. A step that runs out of
        memory again fails its next largest request, so the engine progresses."""
        culprit = max(scheduled.scheduled, key=lambda s: (s.num_new_tokens, s.request.arrival_index)).request
        logger.warning("out of memory in a step of %d tokens; failing request %s (%d tokens in the step): %s",
                       scheduled.num_batched_tokens, culprit.request_id, culprit.num_tokens, error)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        parent_id = self.outputs.parent_id(culprit.request_id)
        if parent_id is None:
            return []
        for child_id in self.outputs.child_ids(parent_id):
            self.scheduler.finish(child_id, FinishReason.ERROR)
        output = self.outputs.fail(parent_id, "out of memory while running this request; retry later, "
                                              "or with a shorter prompt or fewer tokens")
        return [output] if output is not None else []

    def has_unfinished(self) -> bool:
        return (self.scheduler.has_unfinished() or not self._pending.empty() or self._unprocessed is not None
                or self._in_flight is not None)

    def _apply_pending(self) -> list[RequestOutput]:
        aborted = []
        while not self._pending.empty():
            kind, payload = self._pending.get()
            if kind == "add":
                request_id, prompt, children = payload
                self.outputs.add(request_id, prompt, children)
                for child in children:
                    self.scheduler.add_request(child)
            else:
                for child_id in self.outputs.child_ids(payload):
                    self.scheduler.abort(child_id)
                output = self.outputs.abort(payload)
                if output is not None:
                    aborted.append(output)
        return aborted

    # -- stats ---------------------------------------------------------------------
    def _count(self, scheduled: SchedulerOutput, updates: list[RequestUpdate], outputs: list[RequestOutput]) -> None:
        generated = sum(len(u.new_token_ids) for u in updates)
        prompt = sum(max(0, min(s.start + s.num_new_tokens, s.request.num_prompt_tokens) - s.start)
                     for s in scheduled.scheduled)
        self._counters["generation_tokens"] += generated
        self._counters["prompt_tokens"] += prompt
        self._counters["requests_finished"] += sum(1 for o in outputs if o.finished)
        now = time.monotonic()
        self._rate_window.append((now, prompt, generated))
        while self._rate_window and now - self._rate_window[0][0] > _RATE_WINDOW_S:
            self._rate_window.pop(0)

    def stats(self) -> dict[str, float | int]:
        scheduler, kv = self.scheduler, self.kv
        prompt_rate, generation_rate = self._rates()
        return {
            "running": len(scheduler.running),
            "waiting": len(scheduler.waiting),
            "swapped": len(scheduler.swapped),
            "gpu_blocks_total": kv.num_gpu_blocks,
            "gpu_blocks_free": kv.num_free_gpu_blocks,
            "kv_cache_usage": 1.0 - kv.num_free_gpu_blocks / kv.num_gpu_blocks,
            "cpu_swap_blocks_total": kv.num_cpu_blocks,
            "cpu_swap_blocks_used": kv.num_used_cpu_blocks,
            "prefix_cache_hit_rate": kv.prefix_stats.hit_rate,
            "preemptions": scheduler.counters.preemptions,
            "swapped_out": scheduler.counters.swapped_out,
            "swapped_in": scheduler.counters.swapped_in,
            "recomputed": scheduler.counters.recomputed,
            "prompt_tokens": self._counters["prompt_tokens"],
            "generation_tokens": self._counters["generation_tokens"],
            "requests_finished": self._counters["requests_finished"],
            "prompt_tokens_per_s": prompt_rate,
            "generation_tokens_per_s": generation_rate,
            **self._spec_stats(),
        }

    def _spec_stats(self) -> dict[str, float | int]:
        counters = self.scheduler.spec_counters
        per_position = {f"acceptance_rate_position_{i}": accepted / proposed
                        for i, (accepted, proposed) in enumerate(zip(counters.accepted_per_position,
                                                                      counters.proposed_per_position))}
        steps = {f"spec_steps_k_{k}": count for k, count in sorted(counters.steps_by_k.items())}
        policy = self.scheduler.speculation
        estimates = {} if policy is None else {
            f"spec_step_seconds_class_{cls}_k_{k}": seconds
            for cls, periods in policy.estimates().items() for k, seconds in sorted(periods.items())}
        return {
            "spec_drafts": counters.num_drafts,
            "spec_draft_tokens": counters.num_draft_tokens,
            "spec_accepted_tokens": counters.num_accepted_tokens,
            "acceptance_rate": counters.acceptance_rate,
            "mean_accepted_length": counters.mean_accepted_length,
            "spec_rounds_past_stop": counters.rounds_past_stop,
            "spec_synthetic_acceptance": self.args.spec_synthetic_acceptance or 0.0,
            **per_position,
            **steps,
            **estimates,
        }

    def _rates(self) -> tuple[float, float]:
        """Prompt and generation tokens/s over the last 10 s (0 when idle)."""
        now = time.monotonic()
        recent = [entry for entry in self._rate_window if now - entry[0] <= _RATE_WINDOW_S]
        if not recent:
            return 0.0, 0.0
        elapsed = max(now - recent[0][0], 1e-3)
        return sum(e[1] for e in recent) / elapsed, sum(e[2] for e in recent) / elapsed


@dataclass(frozen=True)
class _LaunchedStep:
    scheduled: SchedulerOutput
    finish: Callable[[], ModelOutput]  # waits for the step's results
    scheduled_at: float                # time.perf_counter() before it was scheduled


def _wait_discarding(launched: _LaunchedStep) -> None:
    """Let a launched step finish and throw its results away (its counters never move)."""
    try:
        launched.finish()
    except torch.OutOfMemoryError:
        pass


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(directory: Path | None) -> Any:
    """The directory's tokenizer, or None where it has none (prompts are then token ids)."""
    if directory is None or not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        logger.info("no tokenizer files in %s: prompts must be token ids and outputs have no text", directory)
        return None
    return AutoTokenizer.from_pretrained(directory)


def _eos_token_ids(source: Any, tokenizer: Any) -> frozenset[int]:
    """EOS ids from generation_config.json, else the model config, else the tokenizer."""
    candidates: Any = None
    if source.directory is not None and (source.directory / "generation_config.json").is_file():
        candidates = GenerationConfig.from_pretrained(source.directory).eos_token_id
    if candidates is None:
        candidates = getattr(source.hf_config, "eos_token_id", None)
    if candidates is None and tokenizer is not None:
        candidates = tokenizer.eos_token_id
    if candidates is None:
        return frozenset()
    return frozenset([candidates] if isinstance(candidates, int) else candidates)


def _max_model_len(requested: int | None, arch: ArchConfig) -> int:
    if requested is None:
        return arch.max_position_embeddings
    if requested > arch.max_position_embeddings:
        raise ValueError(f"max_model_len ({requested}) exceeds the model's max_position_embeddings "
                         f"({arch.max_position_embeddings})")
    return requested


def prompt_token_ids(tokenizer: Any, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("prompt: this model has no tokenizer; pass token ids")
        return tokenizer.encode(prompt)
    return list(prompt)


__all__ = ["EngineCore", "load_tokenizer", "prompt_token_ids"]
