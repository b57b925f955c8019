"""Greedy draft passes B as one CUDA graph.

After pass A has chosen each request's first draft, passes B feed draft d at
position p + d (p = the request's token count - 1) and take the argmax of its
logits as draft d + 1. Launched one by one, each pass costs the host far more
than the small draft costs the GPU. `DraftLoopGraphs` captures D such passes
back to back: forward, logits, then the argmax and the next pass's inputs
(the token, position + 1, its slot from the block table, sequence length + 1)
in one kernel (`loop_step`), so D passes cost one staging and one replay.

Graphs exist per (batch bucket, D, split-KV factor), for buckets up to the
verify limit and D up to K - 1. The split factor is pinned per graph and
chosen for the last pass's context, the longest; drafts are proposals, so a
factor that differs from the eager choice for earlier passes changes no
output, only (rarely) which drafts the target accepts. Rows past the batch
(padding) have sequence length 0 and slot -1 throughout: they read and write
nothing. Only greedy drafts without logit edits run here (argmax is their
whole sampler); others take the per-pass path.
"""

from __future__ import annotations

import bisect
import functools
import logging
import time
from typing import Sequence

import torch

from helix.worker.attention.metadata import AttentionMetadata
from helix.worker.cuda_graphs import (MAX_VERIFY_BUCKET, GraphRunner, collection_paused, fill_block_tables,
                                     warmed_capture)
from helix.worker.models import LlamaForCausalLM
from helix.worker.spec_decode import loop_step
from helix.worker.token_feed import PositionShift

logger = logging.getLogger(__name__)


def greedy_passes(model: LlamaForCausalLM, kv_cache: torch.Tensor, meta: AttentionMetadata, ids: torch.Tensor,
                  live: torch.Tensor, drafts: torch.Tensor, depth: int) -> None:
    """`depth` greedy one-token passes, as a graph captures them: pass d runs
    ids [n] at meta's positions and writes its argmax to drafts[:, d] ([n, >=
    depth], rows may be strided); each pass but the last then moves ids,
    positions, sequence lengths and slots (meta's tensors, in place) one
    position on for rows with live [n] = 1."""
    for d in range(depth):
        hidden = model(ids, kv_cache, meta)  # [n, hidden]
        loop_step.step(model.lm_head(hidden), drafts, d, ids, meta.positions, meta.seq_lens, meta.slot_mapping,
                       live, meta.block_tables, meta.block_size, advance=d + 1 < depth)


class DraftLoopGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, block_size: int, passes: GraphRunner,
                 max_depth: int):
        """`passes`: the draft's single-pass graphs, whose buckets and split choices this follows."""
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.passes = passes
        self.max_depth = max_depth
        self.buckets = passes.buckets[1][:bisect.bisect_right(passes.buckets[1], MAX_VERIFY_BUCKET)]
        device = kv_cache.device
        max_bs = self.buckets[-1]
        # Static inputs, advanced in place by each captured pass.
        self._ids = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self._positions = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self._slots = torch.full((max_bs,), -1, dtype=torch.int64, device=device)
        self._seq_lens = torch.zeros(max_bs, dtype=torch.int32, device=device)
        self._live = torch.zeros(max_bs, dtype=torch.int64, device=device)  # 1 for real rows, 0 for padding
        self._block_tables = torch.zeros((max_bs, passes.max_blocks), dtype=torch.int32, device=device)
        self._query_start_loc = torch.arange(max_bs + 1, dtype=torch.int32, device=device)
        self._drafts = torch.zeros((max_bs, max(1, max_depth)), dtype=torch.int64, device=device)
        self._host = torch.zeros((3, max_bs), dtype=torch.int64, pin_memory=True)  # positions, live, slots
        self._host_seq_lens = torch.zeros(max_bs, dtype=torch.int32, pin_memory=True)
        self._host_tables = torch.zeros((max_bs, passes.max_blocks), dtype=torch.int32, pin_memory=True)
        self._staged = torch.cuda.Event()
        self._staged.record()
        self._graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}
        self.replays = 0

    def covers(self, num_seqs: int, depth: int) -> bool:
        return 0 < depth <= self.max_depth and num_seqs <= self.buckets[-1]

    # -- capture -------------------------------------------------------------------
    @torch.inference_mode()
    def capture(self) -> None:
        if self.max_depth < 1:
            return
        started = time.perf_counter()
        with collection_paused():
            for bucket in reversed(self.buckets):
                for depth in range(self.max_depth, 0, -1):
                    for splits in self.passes.split_choices(bucket, 1):  # padding rows write nothing
                        self._graphs[(bucket, depth, splits)] = warmed_capture(
                            functools.partial(self._passes, bucket, depth, splits), self.passes.memory_pool)[0]
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs of up to %d greedy draft passes (batch sizes %s) in %.2f s",
                    len(self._graphs), self.max_depth, ",".join(map(str, self.buckets)),
                    time.perf_counter() - started)

    def _passes(self, bucket: int, depth: int, splits: int) -> None:
        """`depth` greedy passes over the static inputs (what a graph holds)."""
        meta = AttentionMetadata(
            positions=self._positions[:bucket], slot_mapping=self._slots[:bucket],
            block_tables=self._block_tables[:bucket], seq_lens=self._seq_lens[:bucket],
            query_start_loc=self._query_start_loc[:bucket + 1], seq_lens_host=(0,) * bucket,
            query_start_loc_host=tuple(range(bucket + 1)), block_size=self.block_size, num_splits=splits)
        greedy_passes(self.model, self.kv_cache, meta, self._ids[:bucket], self._live[:bucket],
                      self._drafts[:bucket], depth)

    # -- replay ----------------------------------------------------------------------
    def run(self, first_tokens: torch.Tensor, positions: Sequence[int], tables: Sequence[Sequence[int]],
            depth: int, shift: PositionShift | None = None) -> torch.Tensor:
        """Drafts [n, depth] after `first_tokens` [n] (on the device), which sit at
        `positions` of sequences with these block tables (plus `shift`, on the
        device; the tables cover it). Valid until the next run."""
        num_seqs = len(positions)
        bucket = self.buckets[bisect.bisect_left(self.buckets, num_seqs)]
        last_len = max(positions) + depth + (shift.most if shift is not None else 0)
        splits = self.passes.splits_for(num_seqs, 1, last_len)
        graph = self._graphs[(bucket, depth, splits)]
        self._stage(bucket, positions, tables)
        if shift is not None:
            shift.apply(self._positions[:num_seqs].unsqueeze(1), self._seq_lens[:num_seqs],
                        self._slots[:num_seqs].unsqueeze(1), self._block_tables[:num_seqs], self.block_size)
        self._ids[:num_seqs].copy_(first_tokens)
        graph.replay()
        self.replays += 1
        return self._drafts[:num_seqs, :depth]

    def _stage(self, bucket: int, positions: Sequence[int], tables: Sequence[Sequence[int]]) -> None:
        num_seqs, block_size = len(positions), self.block_size
        self._staged.synchronize()  # the last run's copies have read the staging buffers
        host, seq_lens = self._host.numpy(), self._host_seq_lens.numpy()
        host[:2, num_seqs:bucket] = 0
        host[2, num_seqs:bucket] = -1
        seq_lens[num_seqs:bucket] = 0
        host[0, :num_seqs] = positions
        host[1, :num_seqs] = 1
        host[2, :num_seqs] = [t[p // block_size] * block_size + p % block_size for t, p in zip(tables, positions)]
        seq_lens[:num_seqs] = [p + 1 for p in positions]
        fill_block_tables(self._host_tables.numpy(), tables)
        self._positions[:bucket].copy_(self._host[0, :bucket], non_blocking=True)
        self._live[:bucket].copy_(self._host[1, :bucket], non_blocking=True)
        self._slots[:bucket].copy_(self._host[2, :bucket], non_blocking=True)
        self._seq_lens[:bucket].copy_(self._host_seq_lens[:bucket], non_blocking=True)
        self._block_tables[:num_seqs].copy_(self._host_tables[:num_seqs], non_blocking=True)
        self._staged.record()
