"""Draft-model proposer: a small model with its own paged cache, indexed by
the target's block tables (same slots, one budget).

Pass A runs, in one forward, (a) each speculating request's catch-up span:
every token from its draft coverage up to and including its last known token,
whose last logits give the first draft token; and (b) mirrors of this step's
prompt chunks, so prompts are prefilled in both models in the same step.
Passes B then extend each speculating request by one draft token at a time,
K - 1 times, batched over the requests that still need more. Draft tokens
stay on the device: each pass's choices are fed into the next pass (and into
verification) there, and reach the host once, after the last pass.
Chained rounds (`propose_round`) draft from inputs only the device has: the
tokens around the round's start and how far it moved (`rounds.RoundInputs`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from helix.scheduler.outputs import ScheduledRequest
from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.cuda_graphs import DecodeGraphSpec, capture_graphs
from helix.worker.kv_cache import allocate_swappable_cache
from helix.worker.models import LlamaForCausalLM
from helix.worker.device import to_device
from helix.worker.kernels import greedy
from helix.worker.sampler import SamplingRow, choose, transform_logits
from helix.worker.spec_decode import round_kernels
from helix.worker.spec_decode.draft_loop import DraftLoopGraphs
from helix.worker.spec_decode.proposal import DraftRows, Proposal, Proposals, RowFactory
from helix.worker.spec_decode.rounds import RoundInputs
from helix.worker.token_feed import PositionShift, TokenFeed


class DraftModelProposer:
    def __init__(self, model: LlamaForCausalLM, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, graphs: DecodeGraphSpec | None = None):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.cache = allocate_swappable_cache(model.arch, num_gpu_blocks, num_cpu_blocks, block_size, dtype, device)
        self.kv_cache = self.cache.device_cache
        # CUDA graphs for passes of spans up to 1 + K tokens (None: always eager).
        # Passes B are one token per request; pass A is one, two after a verify
        # that accepted every draft (the last draft and the bonus token), or more
        # after steps without speculation.
        query_lens = range(1, graphs.max_query_len + 1) if graphs is not None else (1,)
        self.graphs = capture_graphs(model, self.kv_cache, block_size, graphs, query_lens, "draft")
        # Greedy passes B as one graph (depth up to K - 1).
        self.loop = None
        if self.graphs is not None and self.graphs.max_query_len > 2:
            self.loop = DraftLoopGraphs(model, self.kv_cache, block_size, self.graphs, self.graphs.max_query_len - 2)
            self.loop.capture()
        if self.graphs is not None:  # chained rounds run where graphs do
            round_kernels.warm_up(device, self.graphs.max_query_len)
            greedy.warm_up(model.arch.vocab_size, dtype, device)  # the target's logits: the same vocabulary

    def swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None:
        self.cache.swap(pairs, to_cpu)

    @torch.inference_mode()
    def propose(self, scheduled: Sequence[ScheduledRequest], row_for: RowFactory) -> Proposals:
        """Queue the draft passes; each pass's tokens are fed to the next on the
        device. Only requests whose sampler reads the drafts so far (penalties,
        min_tokens) make a pass wait for its tokens on the host."""
        proposals = Proposals()
        speculating = [item for item in scheduled if item.num_spec_tokens > 0]
        mirrored = [item for item in scheduled if self._mirrors(item)]
        if not speculating and not mirrored:
            return proposals
        history: dict[str, list[int]] = {item.request.request_id: [] for item in speculating
                                         if item.request.sampler_reads_output}
        q_rows: dict[str, list[torch.Tensor]] = {item.request.request_id: [] for item in speculating}
        first = self._pass_a(speculating, mirrored, row_for, history, q_rows, proposals)
        if first is None:
            return proposals
        proposals.on_device.append(first)
        max_depth = max(i.num_spec_tokens for i in speculating) - 1
        if self._loop_covers(speculating, max_depth):
            assert self.loop is not None
            drafts = self.loop.run(first.token_ids, [item.request.num_tokens for item in speculating],
                                   [item.block_table for item in speculating], max_depth)  # [n, max_depth]
            proposals.on_device.extend(DraftRows(first.request_ids, drafts[:, d]) for d in range(max_depth))
        for depth in range(len(proposals.on_device), max_depth + 1):
            extending = [item for item in speculating if item.num_spec_tokens > depth]
            proposals.on_device.append(
                self._pass_b(extending, depth, proposals.on_device[-1], row_for, history, q_rows))
        for item in speculating:
            request_id = item.request.request_id
            q = q_rows[request_id]
            proposals.by_request[request_id] = Proposal([], torch.stack(q) if q else None)
            # Drafts 1..K-1 were fed back; the K-th exists only as a token.
            proposals.draft_computed[request_id] = item.request.num_tokens + item.num_spec_tokens - 1
        return proposals

    @torch.inference_mode()
    def propose_round(self, scheduled: Sequence[ScheduledRequest], positions: Sequence[int],
                      inputs: RoundInputs) -> torch.Tensor:
        """Greedy drafts [B, K] for a chained round whose verify span starts at
        `positions` (lowest; plus `inputs.shift` on the device): pass A feeds the
        token before that position and the one at it (the draft cache may lack
        the first when the round before kept every draft; rewriting it is
        harmless), then passes B extend the drafts to K."""
        num_seqs, k = len(scheduled), scheduled[0].num_spec_tokens
        every = tuple(range(num_seqs))
        spans = [SequenceSpan(item.block_table, position - 1, 2) for item, position in zip(scheduled, positions)]
        feeds = (TokenFeed(every, inputs.before_last, every), TokenFeed(every, inputs.last, every, offset=1))
        hidden, last_rows = self._forward(spans, [0] * 2 * num_seqs, feeds, inputs.shift)
        drafts = [self.model.greedy_tokens(hidden[last_rows])]  # each [B]
        if k > 1 and self.loop is not None and self.loop.covers(num_seqs, k - 1):
            tables = [item.block_table for item in scheduled]
            more = self.loop.run(drafts[0], [position + 1 for position in positions], tables, k - 1, inputs.shift)
            return torch.cat([drafts[0].unsqueeze(1), more], dim=1)
        for depth in range(1, k):
            spans = [SequenceSpan(item.block_table, position + depth, 1)
                     for item, position in zip(scheduled, positions)]
            hidden, last_rows = self._forward(spans, [0] * num_seqs, (TokenFeed(every, drafts[-1], every),),
                                              inputs.shift)
            drafts.append(self.model.greedy_tokens(hidden[last_rows]))
        return torch.stack(drafts, dim=1)

    def _loop_covers(self, speculating: list[ScheduledRequest], depth: int) -> bool:
        """Whether passes B can run as one graph: every request drafts greedily, with
        no logit edits, to the same depth."""
        return (self.loop is not None and self.loop.covers(len(speculating), depth)
                and all(item.num_spec_tokens == depth + 1 and item.request.params.greedy
                        and not item.request.params.logit_bias and not item.request.sampler_reads_output
                        for item in speculating))

    def _mirrors(self, item: ScheduledRequest) -> bool:
        """A prompt chunk the draft can compute in step with the target."""
        request = item.request
        return (item.num_spec_tokens == 0 and request.num_draft_computed_tokens == item.start
                and item.start < request.num_prompt_tokens)

    def _pass_a(self, speculating: list[ScheduledRequest], mirrored: list[ScheduledRequest], row_for: RowFactory,
                history: dict[str, list[int]], q_rows: dict[str, list[torch.Tensor]],
                proposals: Proposals) -> DraftRows | None:
        spans, token_ids = [], []
        for item in speculating:
            request = item.request
            start = request.num_draft_computed_tokens
            spans.append(SequenceSpan(item.block_table, start, request.num_tokens - start))
            token_ids.extend(request.token_ids(start, request.num_tokens))
        for item in mirrored:
            spans.append(SequenceSpan(item.block_table, item.start, item.num_new_tokens))
            token_ids.extend(item.request.token_ids(item.start, item.start + item.num_new_tokens))
            proposals.draft_computed[item.request.request_id] = item.start + item.num_new_tokens
        hidden, last_rows = self._forward(spans, token_ids)
        if not speculating:
            return None
        return self._sample_next(speculating, hidden[last_rows[:len(speculating)]], row_for, history, q_rows)

    def _pass_b(self, extending: list[ScheduledRequest], depth: int, previous: DraftRows, row_for: RowFactory,
                history: dict[str, list[int]], q_rows: dict[str, list[torch.Tensor]]) -> DraftRows:
        # Feed draft `depth` (chosen by the previous pass, on the device) at its position;
        # its logits propose draft depth + 1.
        spans = [SequenceSpan(item.block_table, item.request.num_tokens - 1 + depth, 1) for item in extending]
        row_of = {request_id: i for i, request_id in enumerate(previous.request_ids)}
        feed = TokenFeed(tuple(range(len(extending))), previous.token_ids,
                         tuple(row_of[item.request.request_id] for item in extending))
        hidden, last_rows = self._forward(spans, [0] * len(extending), (feed,))
        return self._sample_next(extending, hidden[last_rows], row_for, history, q_rows)

    def _forward(self, spans: list[SequenceSpan], token_ids: list[int], feeds: Sequence[TokenFeed] = (),
                 shift: PositionShift | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs is not None:
            replayed = self.graphs.run(spans, token_ids, feeds, shift)
            if replayed is not None:
                hidden, query_len = replayed
                if query_len == 1:
                    return hidden, self.graphs.row_indices[:len(spans)]
                last = [i * query_len + span.num_new - 1 for i, span in enumerate(spans)]
                return hidden, to_device(last, torch.int64, self.device)
        if shift is not None:
            spans = shift.shifted(spans)
        meta = build_attention_metadata(spans, self.block_size, self.device)
        input_ids = to_device(token_ids, torch.int64, self.device)
        for feed in feeds:
            feed.apply(input_ids, meta.query_start_loc_host)
        return self.model(input_ids, self.kv_cache, meta), meta.last_token_indices

    def _sample_next(self, items: list[ScheduledRequest], hidden: torch.Tensor, row_for: RowFactory,
                     history: dict[str, list[int]], q_rows: dict[str, list[torch.Tensor]]) -> DraftRows:
        request_ids = [item.request.request_id for item in items]
        rows: list[SamplingRow] = [row_for(item.request, history.get(request_id, ()))
                                   for item, request_id in zip(items, request_ids)]
        transformed = transform_logits(self.model.compute_logits(hidden), rows)  # [len(items), vocab]
        # q is only needed for sampled requests; a greedy draft is one-hot on its token.
        probs = transformed.softmax(dim=-1) if any(not row.params.greedy for row in rows) else None
        chosen = choose(transformed, rows)  # [len(items)] on the device
        for i, (request_id, row) in enumerate(zip(request_ids, rows)):
            if probs is not None and not row.params.greedy:
                q_rows[request_id].append(probs[i])
        if any(request_id in history for request_id in request_ids):  # waits for this pass's tokens
            for request_id, token in zip(request_ids, chosen.tolist()):
                if request_id in history:
                    history[request_id].append(token)
        return DraftRows(request_ids, chosen)
