"""Chained speculative rounds, one CUDA graph per round.

A round whose draft model lags the target by at most one token has one
shape: pass A over two tokens (the one before the round's start and the one
at it), K - 1 greedy draft passes, the verify of 1 + K tokens and the argmax
verdict. Every round after the first of a chained multi-step has it, and so
has the first one after a chained multi-step; otherwise round 0 runs as a
single round does, its pass A catching the draft up over a span of any
length. Launched pass by pass, a round costs the host three stagings and
~40 launches, more than the ~1.5 ms of GPU work of a 1B target's round at
batch 1, so the device waited on the host between passes. `RoundGraphs`
captures a whole round: it reads the round's start and the tokens at and
before it from device buffers, derives every pass's positions, slots and
sequence lengths from them and the block tables, writes its verdict to row
r of an output buffer (r a counter on the device), and moves its inputs on
to the next round. A multi-step stages once and replays once per round.

Graphs exist per (batch bucket, K, split-KV factors of pass A, the draft
passes and the verify). A multi-step uses one set of factors for all its
rounds: the eager choice for the padded batch at the last round's longest
context. Rows past the batch (padding) have live = 0: sequence length 0 and
slot -1 in every pass, so they read and write no cache, and their start
stays put. Greedy only, as chained rounds are; a benchmark's coin replaces
the argmax test with tests drawn before the replays.
"""

from __future__ import annotations

import bisect
import functools
import logging
import time
from typing import Sequence

import torch

from helix.worker.attention.metadata import AttentionMetadata
from helix.worker.cuda_graphs import GraphRunner, collection_paused, fill_block_tables, warmed_capture
from helix.worker.models import LlamaForCausalLM
from helix.worker.spec_decode.draft_loop import greedy_passes
from helix.worker.spec_decode.round_kernels import finish_round, span_inputs

logger = logging.getLogger(__name__)

# Longest contexts tried, this far apart, when listing the split factors a
# multi-step can choose (the launcher's choice moves in steps of its key tile).
_CONTEXT_STEP = 8


class RoundGraphs:
    def __init__(self, target: LlamaForCausalLM, target_cache: torch.Tensor, target_passes: GraphRunner,
                 draft: LlamaForCausalLM, draft_cache: torch.Tensor, draft_passes: GraphRunner, block_size: int,
                 ks: Sequence[int], max_rounds: int, coin: bool):
        """`*_passes`: each model's single-pass graphs, whose split choices and
        table width these follow. `ks`: the K values to capture; `max_rounds`:
        the most rounds one multi-step replays; `coin`: tests come from
        `coins` (a benchmark's acceptance), not the argmax."""
        self.target, self.target_cache, self.target_passes = target, target_cache, target_passes
        self.draft, self.draft_cache, self.draft_passes = draft, draft_cache, draft_passes
        self.block_size = block_size
        self.ks = tuple(sorted(ks))
        self.max_rounds = max_rounds
        self.coin = coin
        self.buckets = target_passes.buckets[1 + self.ks[-1]]
        self.max_model_len = target_passes.max_model_len
        device = target_cache.device
        max_bs, max_k, width = self.buckets[-1], self.ks[-1], target_passes.max_blocks
        int64 = dict(dtype=torch.int64, device=device)
        # What a round reads and advances, per row.
        self._start = torch.ones(max_bs, **int64)        # the round's first verify position
        self._last = torch.zeros(max_bs, **int64)        # the token at it
        self._before_last = torch.zeros(max_bs, **int64)  # the token before it
        self._live = torch.zeros(max_bs, **int64)        # 1 for real rows, 0 for padding
        self._tables = torch.zeros((max_bs, width), dtype=torch.int32, device=device)
        self._index = torch.zeros(1, **int64)            # the replay's index within its multi-step
        self._query_start_loc = {q: torch.arange(0, q * (max_bs + 1), q, dtype=torch.int32, device=device)
                                 for q in {1, 2, *(1 + k for k in self.ks)}}
        # Outputs: round r's verdicts, `packed_verdict` rows laid end to end.
        self._verdicts = torch.zeros((max_rounds, max_bs * (max_k + 2)), **int64)
        self._coins = torch.zeros((max_rounds, max_bs, max_k), dtype=torch.bool, device=device)
        self._host_rows = torch.zeros((2, max_bs), dtype=torch.int64, pin_memory=True)  # start, live
        self._host_tables = torch.zeros((max_bs, width), dtype=torch.int32, pin_memory=True)
        self._staged = torch.cuda.Event()
        self._staged.record()
        self._graphs: dict[tuple[int, int, tuple[int, int, int]], torch.cuda.CUDAGraph] = {}
        self.replays = 0

    @property
    def graph_keys(self) -> tuple[tuple[int, int, tuple[int, int, int]], ...]:
        """(batch bucket, K, split factors) of every captured round."""
        return tuple(self._graphs)

    def splits(self, bucket: int, k: int, longest: int) -> tuple[int, int, int]:
        """Split-KV factors of pass A, the draft passes and the verify for a
        padded batch whose longest context is `longest`."""
        return (self.draft_passes.splits_for(bucket, 2, longest), self.draft_passes.splits_for(bucket, 1, longest),
                self.target_passes.splits_for(bucket, 1 + k, longest))

    # -- capture ---------------------------------------------------------------------
    @torch.inference_mode()
    def capture(self) -> None:
        started = time.perf_counter()
        contexts = sorted({*range(_CONTEXT_STEP, self.max_model_len + 1, _CONTEXT_STEP), self.max_model_len})
        with collection_paused():
            for bucket in reversed(self.buckets):
                for k in self.ks:
                    for splits in sorted({self.splits(bucket, k, longest) for longest in contexts}, reverse=True):
                        self._index.zero_()  # the warm-up round writes verdict row 0; padding rows write nothing
                        self._graphs[(bucket, k, splits)] = warmed_capture(
                            functools.partial(self._one_round, bucket, k, splits), self.target_passes.memory_pool)[0]
        self._index.zero_()
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs of chained speculative rounds (K %s; batch sizes %s) in %.2f s",
                    len(self._graphs), ",".join(map(str, self.ks)), ",".join(map(str, self.buckets)),
                    time.perf_counter() - started)

    def _one_round(self, bucket: int, k: int, splits: tuple[int, int, int]) -> None:
        """One round over the static inputs (what a graph holds)."""
        pass_a_splits, loop_splits, verify_splits = splits
        last, before_last, live = self._last[:bucket], self._before_last[:bucket], self._live[:bucket]
        # Pass A: the token before the start and the one at it; the second's argmax is draft 0.
        ids = torch.stack((before_last, last), dim=1).view(-1)
        hidden = self.draft(ids, self.draft_cache, self._span(bucket, -1, 2, pass_a_splits))
        drafts = torch.empty((bucket, k), dtype=torch.int64, device=ids.device)
        drafts[:, 0] = self.draft.greedy_tokens(hidden.view(bucket, 2, -1)[:, 1])
        if k > 1:  # draft d (d >= 1) from the pass fed draft d - 1 at start + d
            greedy_passes(self.draft, self.draft_cache, self._span(bucket, 1, 1, loop_splits), drafts[:, 0].clone(),
                          live, drafts[:, 1:], k - 1)
        ids = torch.cat((last.unsqueeze(1), drafts), dim=1).view(-1)
        hidden = self.target(ids, self.target_cache, self._span(bucket, 0, 1 + k, verify_splits))
        best = self.target.greedy_tokens(hidden).view(bucket, 1 + k)
        tests = (self._coins.index_select(0, self._index)[0, :bucket, :k] if self.coin
                 else drafts == best[:, :-1])
        finish_round(tests, drafts, best, last, before_last, self._start[:bucket], live, self._index, self._verdicts)
        self._index.add_(1)

    def _span(self, bucket: int, offset: int, count: int, splits: int) -> AttentionMetadata:
        """Attention inputs of `count` tokens per row from position start + offset
        (fresh tensors: the draft passes advance theirs in place)."""
        tables = self._tables[:bucket]
        positions, slots, seq_lens = span_inputs(self._start[:bucket], self._live[:bucket], tables, offset, count,
                                                 self.block_size)
        return AttentionMetadata(
            positions=positions.view(-1), slot_mapping=slots.view(-1), block_tables=tables, seq_lens=seq_lens,
            query_start_loc=self._query_start_loc[count][:bucket + 1], seq_lens_host=(0,) * bucket,
            query_start_loc_host=tuple(range(0, bucket * count + 1, count)), block_size=self.block_size,
            num_splits=splits)

    # -- replay ----------------------------------------------------------------------
    def run(self, starts: Sequence[int], tables: Sequence[Sequence[int]], k: int, num_rounds: int, longest: int,
            last: torch.Tensor, before_last: torch.Tensor, shift: torch.Tensor | None,
            coins: torch.Tensor | None) -> torch.Tensor | None:
        """`num_rounds` rounds of K drafts for B sequences, chained: the first starts
        at `starts` (plus `shift` [B], where given, on the device), at tokens
        `last` [B] with `before_last` [B] before them (the draft's cache holds
        every position before those). No context reaches past `longest`, and the
        tables cover it. Returns the verdicts [num_rounds, B, K + 2] (valid until
        the next run), or None where no graph covers the step. `coins`
        [num_rounds, B, K]: the tests, in coin mode."""
        num_seqs = len(starts)
        if (k not in self.ks or num_seqs > self.buckets[-1] or not 0 < num_rounds <= self.max_rounds
                or longest > self.max_model_len or (coins is not None) != self.coin):
            return None
        bucket = self.buckets[bisect.bisect_left(self.buckets, num_seqs)]
        graph = self._graphs.get((bucket, k, self.splits(bucket, k, longest)))
        if graph is None:
            return None
        self._stage(bucket, starts, tables)
        if shift is not None:
            self._start[:num_seqs].add_(shift)
        self._last[:num_seqs].copy_(last)
        self._before_last[:num_seqs].copy_(before_last)
        if coins is not None:
            self._coins[:num_rounds, :num_seqs, :k].copy_(coins)
        self._index.zero_()
        for _ in range(num_rounds):
            graph.replay()
        self.replays += num_rounds
        return self._verdicts[:num_rounds, :bucket * (k + 2)].view(num_rounds, bucket, k + 2)[:, :num_seqs]

    def _stage(self, bucket: int, starts: list[int], tables: Sequence[Sequence[int]]) -> None:
        num_seqs = len(starts)
        self._staged.synchronize()  # the last run's copies have read the staging buffers
        rows = self._host_rows.numpy()
        rows[0, :num_seqs], rows[1, :num_seqs] = starts, 1
        rows[0, num_seqs:bucket], rows[1, num_seqs:bucket] = 1, 0
        fill_block_tables(self._host_tables.numpy(), tables)
        self._start[:bucket].copy_(self._host_rows[0, :bucket], non_blocking=True)
        self._live[:bucket].copy_(self._host_rows[1, :bucket], non_blocking=True)
        self._tables[:num_seqs].copy_(self._host_tables[:num_seqs], non_blocking=True)
        self._staged.record()
