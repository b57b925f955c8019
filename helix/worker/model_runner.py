"""Turns a SchedulerOutput into tensors, runs the model(s) and samples.

The runner owns the KV cache tensors (GPU and CPU swap), the speculative
proposer and per-request sampling state (seeded generators). It reads
requests, never writes them.

One step: swap blocks; the proposer drafts tokens for speculating requests;
one target forward over every span (prompt chunks, decode tokens, and
last-token-plus-drafts verification spans); then plain sampling for ordinary
requests and rejection sampling for speculating ones. A multi-step (requests
with `num_steps` > 1) then runs further decode forwards, each fed the tokens
the one before chose, before anything is read back; a multi-step of
speculating requests chains speculative rounds instead (`_launch_rounds`,
`spec_decode.rounds`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from helix.scheduler.outputs import ModelOutput, ScheduledRequest, SchedulerOutput
from helix.scheduler.request import Request, TokenLogprobs
from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.cuda_graphs import DecodeGraphSpec, capture_graphs
from helix.worker.device import HostCopy, to_device
from helix.worker.kv_cache import allocate_swappable_cache
from helix.worker.models import LlamaForCausalLM
from helix.worker.sampler import (PendingTokens, SamplingRow, choose, takes_raw_argmax, top_logprobs,
                                  transform_logits)
from helix.worker.spec_decode.proposal import Proposals, Proposer
from helix.worker.spec_decode.draft_proposer import DraftModelProposer
from helix.worker.spec_decode.rejection_sampler import Acceptance, ExactAcceptance, decide_rows
from helix.worker.spec_decode.round_graphs import RoundGraphs
from helix.worker.spec_decode.round_kernels import packed_verdict
from helix.worker.spec_decode.rounds import ChainedVerdicts, RoundInputs
from helix.worker.token_feed import PositionShift, TokenFeed


@dataclass(frozen=True)
class SpanRows:
    """Where each span's tokens sit in a forward's output: span i is rows
    first[i] .. first[i] + count[i] - 1 (graph replays pad spans apart)."""

    first: tuple[int, ...]
    count: tuple[int, ...]

    def last(self, index: int) -> int:
        return self.first[index] + self.count[index] - 1


@dataclass(frozen=True)
class _PendingSamples:
    """Tokens chosen on the device for ordinary requests, not yet read back."""

    request_ids: list[str]
    tokens: PendingTokens    # ids [n] on the device, on their way to the host with any logprobs
    row_of: dict[str, int]   # request id -> index into the ids


@dataclass(frozen=True)
class _Verdicts:
    """Verify rows decided on the device, on their way to the host: request i's
    rows start at row placement[i][1] of tensor placement[i][0] (greedy: argmax
    per row; sampled: acceptance tests, and stopping tokens in the next tensor)."""

    copy: HostCopy
    placement: list[tuple[int, int]]


@dataclass(frozen=True)
class _PendingVerify:
    """Verify rows' logits, queued at launch: request i's rows are the next counts[i]."""

    items: list[ScheduledRequest]
    counts: list[int]                   # 1 + its drafts, per request
    logits: torch.Tensor                # [sum(counts), vocab] raw
    verdicts: _Verdicts | None = None   # queued at launch, unless the sampling transform reads the drafts


@dataclass(frozen=True)
class _PendingPromptLogprobs:
    """One request's prompt-token logprobs, computed on the device, not yet read back."""

    request: Request
    start: int                 # the step's first position
    logprobs: torch.Tensor     # [m, vocab]: row j scores the prompt token at start + j + 1
    targets: list[int]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, seed: int = 0, proposer: Proposer | None = None,
                 graphs: DecodeGraphSpec | None = None, accept: Acceptance | None = None):
        self.model = model
        self.accept = accept if accept is not None else ExactAcceptance()  # which drafts a verify keeps
        self.block_size = block_size
        self.device = device
        self.proposer = proposer
        self.cache = allocate_swappable_cache(model.arch, num_gpu_blocks, num_cpu_blocks, block_size, dtype, device)
        self.kv_cache = self.cache.device_cache
        # CUDA graphs for decode and verify steps (None: always eager).
        query_lens = range(1, graphs.max_query_len + 1) if graphs is not None else (1,)
        self.graphs = capture_graphs(model, self.kv_cache, block_size, graphs, query_lens, "target")
        self.round_graphs = self._capture_round_graphs(graphs)
        self._shared_generator = torch.Generator(device=device).manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}
        self._rows: dict[str, SamplingRow] = {}  # per running request, at its next position
        # The last launched step's choices, one entry per forward that sampled (several
        # in a multi-step): a step scheduled ahead feeds them in.
        self._last_sampled: list[_PendingSamples] = []

    def _capture_round_graphs(self, spec: DecodeGraphSpec | None) -> RoundGraphs | None:
        """Whole-round graphs for chained rounds, where both models' pass graphs exist."""
        proposer = self.proposer
        if (spec is None or not spec.round_ks or spec.max_rounds < 2 or self.graphs is None
                or not isinstance(proposer, DraftModelProposer) or proposer.graphs is None):
            return None
        coin = self.accept.coins((0,), self.device) is not None  # an empty draw: whether tests are coins
        graphs = RoundGraphs(self.model, self.kv_cache, self.graphs, proposer.model, proposer.kv_cache,
                             proposer.graphs, self.block_size, spec.round_ks, spec.max_rounds, coin)
        graphs.capture()
        return graphs

    @torch.inference_mode()
    def launch(self, step: SchedulerOutput) -> Callable[[], ModelOutput]:
        """Queue the step's GPU work and return a function that waits for it and
        returns its output. Nothing between the two waits on the GPU (drafting
        does only for samplers that read the drafts so far), so the caller's host
        work overlaps the step. The next step may be launched before the
        function is called (scheduled ahead; its in-flight tokens are fed from
        this step's choices on the device): everything the function reads is
        computed here, not read later from a graph's reused output."""
        self._drop_finished(step.finished_ids)
        self._swap(step.swap_out, to_cpu=True)
        self._swap(step.swap_in, to_cpu=False)
        output = ModelOutput(sampled={})
        if not step.scheduled:
            return lambda: output
        if step.scheduled[0].num_spec_tokens and step.scheduled[0].num_steps > 1:
            return self._launch_rounds(step.scheduled)
        proposals = Proposals() if self.proposer is None else self.proposer.propose(step.scheduled, self._row_for)
        proposals.start_reading()  # `finish` reads them; chained rounds keep theirs on the device
        hidden, rows = self._forward(step.scheduled, proposals)
        prompt_logprobs = self._start_prompt_logprobs(step.scheduled, hidden, rows)
        sampling = self._start_sampling(step.scheduled, rows, hidden, proposals)
        verify = self._start_verify(step.scheduled, hidden, rows, proposals)
        self._last_sampled = [sampling] if sampling is not None else []
        self._launch_more_steps(step.scheduled)
        samplings = self._last_sampled

        @torch.inference_mode()
        def finish() -> ModelOutput:
            _finish_prompt_logprobs(prompt_logprobs, output)
            for pending in samplings:  # in order: a multi-step's tokens
                self._finish_sampling(pending, output)
            proposals.read_drafts()
            self._verify(verify, proposals, output)
            output.draft_computed.update(proposals.draft_computed)
            return output

        return finish

    def _launch_rounds(self, scheduled: list[ScheduledRequest]) -> Callable[[], ModelOutput]:
        """Chained speculative rounds (every request: the same K, the same number of
        rounds, greedy; see `rounds`), each drafting and verifying from where the
        one before stopped, on the device. Where the draft model lags the target
        by at most one token (after a chained step), every round replays a
        round graph; otherwise round 0 is an ordinary verify, whose draft pass
        catches up, and the later rounds replay round graphs, or run pass by pass
        where no graph covers them."""
        assert isinstance(self.proposer, DraftModelProposer)
        self._last_sampled = []
        k, num_rounds, num_seqs = scheduled[0].num_spec_tokens, scheduled[0].num_steps, len(scheduled)
        coins = self.accept.coins((num_rounds, num_seqs, k), self.device)  # [R, B, K]; None: the argmax tests
        verdicts = self._graphed_rounds(scheduled, coins)
        if verdicts is None:
            verdict, inputs = self._first_round(scheduled, coins)
            verdicts = [verdict.unsqueeze(0), *self._later_rounds(scheduled, inputs, coins)]
        chained = ChainedVerdicts.of(verdicts)

        @torch.inference_mode()
        def finish() -> ModelOutput:
            output = ModelOutput(sampled={})
            for item, (emitted, kept_per_round) in zip(scheduled, chained.per_request()):
                request_id = item.request.request_id
                output.sampled[request_id] = emitted
                output.verifies[request_id] = [(k, count) for count in kept_per_round]
                # The last round's pass A and passes B computed the draft cache up to its K - 1th draft.
                last_start = item.start + num_rounds - 1 + sum(kept_per_round[:-1])
                output.draft_computed[request_id] = last_start + k
            return output

        return finish

    def _graphed_rounds(self, scheduled: list[ScheduledRequest], coins: torch.Tensor | None
                        ) -> list[torch.Tensor] | None:
        """Every round's verdicts [R, B, K + 2] from round graphs, where the draft's
        cache lacks at most each request's last token (round graphs rewrite the
        token before their start and write the one at it); else None."""
        if self.round_graphs is None or not all(item.request.num_draft_computed_tokens >= item.start - 1 >= 0
                                                for item in scheduled):
            return None
        known = to_device([item.request.token_ids(item.start - 1, item.start + 1) for item in scheduled],
                          torch.int64, self.device)  # [B, 2]: the tokens before and at each start
        replayed = self._replayed_rounds(scheduled, 0, known[:, 1], known[:, 0], None, coins)
        return None if replayed is None else [replayed]

    def _later_rounds(self, scheduled: list[ScheduledRequest], inputs: RoundInputs, coins: torch.Tensor | None
                      ) -> list[torch.Tensor]:
        """Rounds 1 .. R - 1 after an ordinary round 0, which left `inputs`: their
        verdicts, from round graphs where they cover the step, else pass by pass."""
        replayed = self._replayed_rounds(scheduled, 1, inputs.last, inputs.before_last, inputs.shift.by, coins)
        return [replayed] if replayed is not None else self._rounds_pass_by_pass(scheduled, inputs, coins)

    def _replayed_rounds(self, scheduled: list[ScheduledRequest], first: int, last: torch.Tensor,
                         before_last: torch.Tensor, shift: torch.Tensor | None, coins: torch.Tensor | None
                         ) -> torch.Tensor | None:
        """Rounds `first` .. R - 1 as round graph replays: their verdicts [R - first,
        B, K + 2], or None where no graph covers the step. Round `first` starts
        at each request's start + first (plus `shift` [B] on the device, where
        given) at token `last` [B], `before_last` [B] before it."""
        if self.round_graphs is None:
            return None
        return self.round_graphs.run([item.start + first for item in scheduled],
                                     [item.block_table for item in scheduled], scheduled[0].num_spec_tokens,
                                     scheduled[0].num_steps - first, _chained_reach(scheduled), last, before_last,
                                     shift, None if coins is None else coins[first:])

    def _first_round(self, scheduled: list[ScheduledRequest], coins: torch.Tensor | None
                     ) -> tuple[torch.Tensor, RoundInputs]:
        """Round 0 as an ordinary verify: its verdict and round 1's inputs."""
        proposals = self.proposer.propose(scheduled, self._row_for)
        drafts = torch.stack([rows.token_ids for rows in proposals.on_device], dim=1)  # [B, K]
        hidden, _ = self._forward(scheduled, proposals)
        known = to_device([item.request.token_ids(item.start, item.start + 1)[0] for item in scheduled], torch.int64,
                          self.device)
        return self._decide_round(hidden, drafts, RoundInputs.first(known), None if coins is None else coins[0])

    def _rounds_pass_by_pass(self, scheduled: list[ScheduledRequest], inputs: RoundInputs,
                             coins: torch.Tensor | None) -> list[torch.Tensor]:
        """Rounds 1 .. R - 1, each pass launched on its own (eager, or the passes'
        graphs with positions shifted on the device): their verdicts [1, B, K + 2]."""
        assert isinstance(self.proposer, DraftModelProposer)
        k, num_seqs = scheduled[0].num_spec_tokens, len(scheduled)
        every = tuple(range(num_seqs))
        verdicts = []
        for r in range(1, scheduled[0].num_steps):
            positions = [item.start + r for item in scheduled]  # the lowest start: a token per round before
            drafts = self.proposer.propose_round(scheduled, positions, inputs)
            spans = [SequenceSpan(item.block_table, position, 1 + k) for item, position in zip(scheduled, positions)]
            feeds = [TokenFeed(every, inputs.last, every)] + [
                TokenFeed(every, drafts[:, d], every, offset=1 + d) for d in range(k)]
            hidden, _ = self._run_spans(spans, [0] * num_seqs * (1 + k), feeds, inputs.shift)
            verdict, inputs = self._decide_round(hidden, drafts, inputs, None if coins is None else coins[r])
            verdicts.append(verdict.unsqueeze(0))
        return verdicts

    def _decide_round(self, hidden: torch.Tensor, drafts: torch.Tensor, inputs: RoundInputs,
                      coins: torch.Tensor | None) -> tuple[torch.Tensor, RoundInputs]:
        """A chained round's verdict ([B, K + 2], `packed_verdict`) and the next
        round's inputs, from its verify forward (every span 1 + K rows, end to
        end) and its drafts [B, K]; `coins` [B, K], where given, are the tests."""
        num_seqs, k = drafts.shape
        best = self.model.greedy_tokens(hidden[:num_seqs * (1 + k)]).view(num_seqs, 1 + k)
        tests = drafts == best[:, :-1] if coins is None else coins
        kept, next_token, next_inputs = inputs.advance(drafts, best, tests)
        return packed_verdict(drafts, kept, next_token), next_inputs

    def _launch_more_steps(self, scheduled: list[ScheduledRequest]) -> None:
        """A multi-step's forwards after the first: forward i decodes position
        start + i of every request with more than i steps, fed the token that
        forward i - 1 chose, and queues its own choice."""
        for index in range(1, max(item.num_steps for item in scheduled)):
            decoding = [ScheduledRequest(item.request, item.start + index, 1, item.block_table)
                        for item in scheduled if item.num_steps > index]
            no_drafts = Proposals()
            hidden, rows = self._forward(decoding, no_drafts)
            sampling = self._start_sampling(decoding, rows, hidden, no_drafts)
            assert sampling is not None  # every request of the forward samples
            self._last_sampled.append(sampling)

    def _forward(self, scheduled: list[ScheduledRequest], proposals: Proposals) -> tuple[torch.Tensor, SpanRows]:
        spans, token_ids = [], []
        fed: dict[int, tuple[_PendingSamples, list[int], list[int]]] = {}  # by source: (source, spans, rows)
        num_device_drafts = Counter(request_id for rows in proposals.on_device for request_id in rows.request_ids)
        for index, item in enumerate(scheduled):
            request = item.request
            request_id = request.request_id
            if item.num_spec_tokens:
                proposal = proposals.by_request.get(request_id)
                # Drafts chosen on the device are fed in below; placeholders hold their rows.
                drafts = [0] * num_device_drafts[request_id] if num_device_drafts[request_id] else (
                    proposal.token_ids if proposal is not None else [])
                tokens = request.token_ids(item.start, item.start + 1) + drafts
            elif item.start >= request.num_tokens:  # scheduled ahead: an earlier forward is choosing it
                source, row = self._previous_choice(request_id)
                group = fed.get(id(source))
                if group is None:  # not setdefault: its default would be built for every request
                    group = fed[id(source)] = (source, [], [])
                group[1].append(index)
                group[2].append(row)
                tokens = [0] * item.num_new_tokens  # a placeholder, overwritten on the device
            else:
                tokens = request.token_ids(item.start, item.start + item.num_new_tokens)
            spans.append(SequenceSpan(item.block_table, item.start, len(tokens)))
            token_ids.extend(tokens)
        feeds = self._draft_feeds(scheduled, proposals)
        feeds.extend(TokenFeed(tuple(fed_spans), source.tokens.token_ids, tuple(fed_rows))
                     for source, fed_spans, fed_rows in fed.values())
        return self._run_spans(spans, token_ids, feeds)

    def _run_spans(self, spans: list[SequenceSpan], token_ids: list[int], feeds: Sequence[TokenFeed],
                   shift: PositionShift | None = None) -> tuple[torch.Tensor, SpanRows]:
        """The target forward over `spans` (shifted by `shift` on the device): a graph
        replay where one covers the batch, else eager."""
        counts = tuple(span.num_new for span in spans)
        if self.graphs is not None:
            replayed = self.graphs.run(spans, token_ids, feeds, shift)
            if replayed is not None:
                hidden, query_len = replayed
                return hidden, SpanRows(tuple(range(0, query_len * len(spans), query_len)), counts)
        if shift is not None:
            spans = shift.shifted(spans)
        meta = build_attention_metadata(spans, self.block_size, self.device)
        input_ids = to_device(token_ids, torch.int64, self.device)
        for feed in feeds:
            feed.apply(input_ids, meta.query_start_loc_host)
        hidden = self.model(input_ids, self.kv_cache, meta)  # [num_tokens, hidden]
        return hidden, SpanRows(meta.query_start_loc_host[:-1], counts)

    @staticmethod
    def _draft_feeds(scheduled: list[ScheduledRequest], proposals: Proposals) -> list[TokenFeed]:
        """Drafts still on the device, into their verify spans: depth d at offset 1 + d."""
        if not proposals.on_device:
            return []
        span_of = {item.request.request_id: index for index, item in enumerate(scheduled)}
        return [TokenFeed(tuple(span_of[request_id] for request_id in rows.request_ids), rows.token_ids,
                          tuple(range(len(rows.request_ids))), offset=1 + depth)
                for depth, rows in enumerate(proposals.on_device)]

    def _previous_choice(self, request_id: str) -> tuple[_PendingSamples, int]:
        """The latest forward that chose a token for this request, and the row of
        that choice in its chosen ids."""
        for sampling in reversed(self._last_sampled):
            row = sampling.row_of.get(request_id)
            if row is not None:
                return sampling, row
        raise RuntimeError(f"request {request_id} was scheduled ahead, but the previous step sampled no token for it")

    def _start_sampling(self, scheduled: list[ScheduledRequest], rows: SpanRows, hidden: torch.Tensor,
                        proposals: Proposals) -> _PendingSamples | None:
        """Ordinary requests: queue the choice of one token from the last position of their span."""
        chosen = [(i, item) for i, item in enumerate(scheduled)
                  if item.samples and item.request.request_id not in proposals.by_request]
        if not chosen:
            return None
        last_rows = [rows.last(i) for i, _ in chosen]
        selected = (hidden[:len(last_rows)] if last_rows == list(range(len(last_rows)))
                    else hidden[to_device(last_rows, torch.int64, self.device)])
        sampling_rows = [self._row_for(item.request, ()) for _, item in chosen]
        if all(takes_raw_argmax(row) for row in sampling_rows):  # the logits are never materialised in fp32
            logits, token_ids = None, self.model.greedy_tokens(selected)
        else:
            logits = self.model.compute_logits(selected)  # [len(chosen), vocab]
            token_ids = choose(transform_logits(logits, sampling_rows), sampling_rows)  # [len(chosen)], on device
        request_ids = [item.request.request_id for _, item in chosen]
        return _PendingSamples(request_ids, PendingTokens(logits, sampling_rows, token_ids),
                               {request_id: i for i, request_id in enumerate(request_ids)})

    def _finish_sampling(self, pending: _PendingSamples | None, output: ModelOutput) -> None:
        if pending is None:
            return
        for request_id, token in zip(pending.request_ids, pending.tokens.result()):
            output.sampled.setdefault(request_id, []).append(token.token_id)
            if token.logprob is not None:
                output.logprobs.setdefault(request_id, []).append(
                    TokenLogprobs(token.token_id, token.logprob, token.top_logprobs))

    def _start_verify(self, scheduled: list[ScheduledRequest], hidden: torch.Tensor, span_rows: SpanRows,
                      proposals: Proposals) -> _PendingVerify | None:
        """Speculating requests: queue one lm_head over every verify row and, where
        the sampling transform does not read the drafts, the verdicts too."""
        verifying = [(i, item) for i, item in enumerate(scheduled) if item.request.request_id in proposals.by_request]
        if not verifying:
            return None
        items = [item for _, item in verifying]
        counts = [span_rows.count[i] for i, _ in verifying]
        row_index = [row for i, _ in verifying
                     for row in range(span_rows.first[i], span_rows.first[i] + span_rows.count[i])]
        logits = self.model.compute_logits(hidden[to_device(row_index, torch.int64, self.device)])
        pending = _PendingVerify(items, counts, logits)
        if any(item.request.sampler_reads_output for item in items):
            return pending  # penalties and min_tokens read the drafts: decided once they are on the host
        rows = [self._row_for(item.request, ()) for item, count in zip(items, counts) for _ in range(count)]
        return replace(pending, verdicts=self._decide(pending, transform_logits(logits, rows), proposals))

    def _decide(self, pending: _PendingVerify, transformed: torch.Tensor, proposals: Proposals) -> _Verdicts:
        """Queue the verdicts of every verify row (transformed: [sum(counts), vocab]),
        one batch per sampling mode and generator, and their copy to the host."""
        first_rows = [0]
        for count in pending.counts:
            first_rows.append(first_rows[-1] + count)
        groups: dict[tuple[str, str], list[int]] = {}  # (mode, seeded request or "") -> request indices
        for i, item in enumerate(pending.items):
            params = item.request.params
            key = (("greedy", "") if params.greedy else
                   ("sampled", item.request.request_id if params.seed is not None else ""))
            groups.setdefault(key, []).append(i)
        tensors: list[torch.Tensor] = []
        placement: list[tuple[int, int]] = [(0, 0)] * len(pending.items)  # request -> (first tensor, row)
        for (mode, _), members in groups.items():
            group_logits = transformed
            if len(groups) > 1:
                rows = [row for i in members for row in range(first_rows[i], first_rows[i + 1])]
                group_logits = transformed[to_device(rows, torch.int64, self.device)]
            greedy = mode == "greedy"
            tested = draft_probs = generator = None
            if not greedy:
                member_items = [pending.items[i] for i in members]
                member_counts = [pending.counts[i] for i in members]
                tested = proposals.tested_tokens([item.request.request_id for item in member_items], member_counts,
                                                 self.device)
                draft_probs = _draft_probs(member_items, member_counts, tested, proposals, transformed.shape[1])
                request = member_items[0].request
                generator = self._generator_for(request.request_id, request.params.seed)
            offset = 0
            for i in members:
                placement[i] = (len(tensors), offset)
                offset += pending.counts[i]
            tensors.extend(decide_rows(group_logits, tested, draft_probs, greedy, generator))
        return _Verdicts(HostCopy(tensors), placement)

    def _verify(self, pending: _PendingVerify | None, proposals: Proposals, output: ModelOutput) -> None:
        """Accept a prefix of each request's drafts, then one more token (drafts are on the host now)."""
        if pending is None:
            return
        verdicts = pending.verdicts
        if verdicts is None:  # penalties and min_tokens read the drafts before each row
            transformed = transform_logits(pending.logits, [
                self._row_for(item.request, proposals.by_request[item.request.request_id].token_ids[:position])
                for item, count in zip(pending.items, pending.counts) for position in range(count)])
            verdicts = self._decide(pending, transformed, proposals)
        decided = [tensor.tolist() for tensor in verdicts.copy.wait()]
        first = 0
        for item, count, (tensor, row) in zip(pending.items, pending.counts, verdicts.placement):
            request = item.request
            drafts = proposals.by_request[request.request_id].token_ids
            span = slice(first, first + count)
            first = span.stop
            if request.params.greedy:  # one tensor: each row's argmax
                stopping = decided[tensor][row:row + count]
                accepted = [draft == best for draft, best in zip(drafts, stopping)]
            else:  # two: acceptance tests, then stopping tokens
                accepted, stopping = decided[tensor][row:row + count], decided[tensor + 1][row:row + count]
            emitted = self.accept(drafts, accepted, stopping)
            output.sampled[request.request_id] = emitted
            output.verifies[request.request_id] = [(len(drafts), len(emitted) - 1)]
            if request.params.logprobs is not None:
                output.logprobs[request.request_id] = _emitted_logprobs(pending.logits[span], emitted,
                                                                        request.params.logprobs)

    def _row_for(self, request: Request, extra_tokens: Sequence[int]) -> SamplingRow:
        """Sampling settings at the position after the request's tokens plus `extra_tokens`."""
        if not extra_tokens:
            # The row holds the live output list, so one row serves every step.
            row = self._rows.get(request.request_id)
            if row is None or row.output_token_ids is not request.output_token_ids:
                row = self._rows[request.request_id] = self._new_row(request, request.output_token_ids)
            return row
        return self._new_row(request, request.output_token_ids + list(extra_tokens))

    def _new_row(self, request: Request, output_token_ids: list[int]) -> SamplingRow:
        params = request.params
        return SamplingRow(params=params, prompt_token_ids=request.prompt_token_ids,
                           output_token_ids=output_token_ids, stop_ids_before_min=request.stop_token_set,
                           generator=self._generator_for(request.request_id, params.seed), grammar=request.grammar)

    def _generator_for(self, request_id: str, seed: int | None) -> torch.Generator:
        if seed is None:
            return self._shared_generator
        generator = self._request_generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self._request_generators[request_id] = generator
        return generator

    def _start_prompt_logprobs(self, scheduled: list[ScheduledRequest], hidden: torch.Tensor,
                               span_rows: SpanRows) -> list[_PendingPromptLogprobs]:
        """Queue the log-probabilities of prompt tokens: logits at position p score the token at p + 1."""
        pending = []
        for i, item in enumerate(scheduled):
            request = item.request
            if not request.wants_prompt_logprobs:
                continue
            last_position = min(item.start + item.num_new_tokens, request.num_prompt_tokens - 1)
            first, count = span_rows.first[i], last_position - item.start
            logprobs = (self.model.compute_logits(hidden[first:first + count]).log_softmax(dim=-1) if count > 0
                        else hidden.new_empty((0, 0)))
            pending.append(_PendingPromptLogprobs(request, item.start, logprobs,
                                                  request.prompt_token_ids[item.start + 1:last_position + 1]))
        return pending

    def _swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None:
        if not pairs:
            return
        self.cache.swap(pairs, to_cpu)
        if self.proposer is not None:
            self.proposer.swap(pairs, to_cpu)

    def _drop_finished(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._request_generators.pop(request_id, None)
            self._rows.pop(request_id, None)


def _chained_reach(scheduled: list[ScheduledRequest]) -> int:
    """The longest context chained rounds can reach: each round emits at most
    1 + K tokens (the scheduler reserved slots that far)."""
    return max(item.start for item in scheduled) + scheduled[0].num_steps * (1 + scheduled[0].num_spec_tokens)


def _finish_prompt_logprobs(pending: list[_PendingPromptLogprobs], output: ModelOutput) -> None:
    for entry in pending:
        request = entry.request
        entries: list[TokenLogprobs | None] = [None] if entry.start == 0 else []
        for row, target in zip(entry.logprobs, entry.targets):
            entries.append(TokenLogprobs(target, float(row[target]),
                                         top_logprobs(row, request.params.prompt_logprobs or 0)))
        # After a recompute, positions scored before the preemption are not repeated.
        first_token = 0 if entry.start == 0 else entry.start + 1
        already = max(0, len(request.prompt_logprobs) - first_token)
        output.prompt_logprobs[request.request_id] = entries[already:]


def _draft_probs(items: list[ScheduledRequest], counts: list[int], tested: torch.Tensor, proposals: Proposals,
                 vocab: int) -> torch.Tensor:
    """[sum(counts), vocab] q of each verify row's draft: the proposer's
    distribution, one-hot where it proposed deterministically, zero on each
    request's bonus row. tested: [sum(counts)] the drafts (-1 on bonus rows)."""
    parts = []
    first = 0
    bonus_row = torch.zeros((1, vocab), dtype=torch.float32, device=tested.device)
    for item, count in zip(items, counts):
        probs = proposals.by_request[item.request.request_id].draft_probs
        if probs is None:
            probs = torch.nn.functional.one_hot(tested[first:first + count - 1], vocab).float()
        parts.extend((probs.float(), bonus_row))
        first += count
    return torch.cat(parts)


def _emitted_logprobs(logits: torch.Tensor, emitted: list[int], count: int) -> list[TokenLogprobs]:
    """Logprobs of the target's raw distribution at each emitted position."""
    logprobs = logits[:len(emitted)].log_softmax(dim=-1)
    return [TokenLogprobs(token, float(logprobs[i, token]), top_logprobs(logprobs[i], count))
            for i, token in enumerate(emitted)]
