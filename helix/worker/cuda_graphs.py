"""CUDA graphs for pure-decode forwards (every span has exactly one query token).

A decode step of a small batch is launch- and host-bound: ~15 kernels per layer,
each costing more host time than GPU time. `DecodeGraphRunner` captures
`model(input_ids, kv_cache, meta) -> hidden` once per bucketed batch size and
replays it, so a step costs a few small host-to-device copies and one graph
launch.

Static inputs live in preallocated device buffers (input ids, positions, slot
mapping, block tables [bucket, max_blocks_per_seq], sequence lengths, query
start offsets); a batch of n sequences runs the graph of the smallest bucket
>= n. Padding rows are harmless: slot -1 (the Triton `write_kv` skips it), and
sequence length 0, so their attention reads no key and writes zeros. Real rows
read only the blocks their length covers, so stale table entries are never read.

Attention goes through the Triton kernels, whose launch depends on host data
only through the split-KV factor; it is pinned per graph (`AttentionMetadata.
num_splits`). Each bucket is captured once for every factor the eager launcher
could choose for that bucket's batch sizes up to max_model_len, and a replay
uses the factor the eager path would choose for the real batch, so every real
row is computed by the same kernels with the same launch as in eager mode.

All graphs of one runner share one memory pool, largest bucket captured first.
A replay's output is valid until the runner's next replay. Batches with a
longer span, more sequences than the largest bucket, or contexts beyond
max_model_len fall back to eager (`run` returns None).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

from helix.worker.attention.metadata import AttentionMetadata, SequenceSpan
from helix.worker.models import LlamaForCausalLM

logger = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_MIB = 1 << 20


@dataclass(frozen=True)
class DecodeGraphSpec:
    """What graph capture needs from the engine configuration."""

    max_num_seqs: int
    max_model_len: int


def graph_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """Captured batch sizes: the powers of two up to max_num_seqs (at most 256)."""
    return tuple(b for b in BUCKETS if b <= max(1, max_num_seqs))


def capture_decode_graphs(model: LlamaForCausalLM, kv_cache: torch.Tensor, block_size: int,
                          spec: DecodeGraphSpec | None, name: str = "model") -> DecodeGraphRunner | None:
    """A captured runner where graphs apply (CUDA, Triton attention usable), else None."""
    if spec is None or not graphs_supported(model, kv_cache):
        return None
    runner = DecodeGraphRunner(model, kv_cache, block_size, spec.max_model_len, spec.max_num_seqs)
    runner.capture(name)
    return runner


def graphs_supported(model: LlamaForCausalLM, kv_cache: torch.Tensor) -> bool:
    if kv_cache.device.type != "cuda" or model.attention_backend != "triton":
        return False
    from helix.worker.attention import triton_attention

    arch = model.arch
    probe = torch.empty((1, arch.num_heads, arch.head_dim), dtype=kv_cache.dtype, device=kv_cache.device)
    # The reference fallback reads host tuples, which a graph would freeze.
    return triton_attention._usable(probe, kv_cache[0])


class DecodeGraphRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, block_size: int, max_model_len: int,
                 max_num_seqs: int):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.buckets = graph_buckets(max_num_seqs)
        self.max_blocks = -(-max_model_len // block_size)
        self.device = kv_cache.device
        arch = model.arch
        self._heads = (arch.num_heads, arch.num_kv_heads, arch.head_dim, kv_cache.dtype)
        max_bs = self.buckets[-1]
        # Static device inputs: rows of _tokens are input ids, positions, slots.
        self._tokens = torch.zeros((3, max_bs), dtype=torch.int64, device=self.device)
        self._tokens[2].fill_(-1)
        self._seq_lens = torch.zeros(max_bs, dtype=torch.int32, device=self.device)
        self._block_tables = torch.zeros((max_bs, self.max_blocks), dtype=torch.int32, device=self.device)
        self._query_start_loc = torch.arange(max_bs + 1, dtype=torch.int32, device=self.device)
        self.row_indices = torch.arange(max_bs, dtype=torch.int64, device=self.device)
        # Pinned staging for non-blocking host-to-device copies.
        self._host_tokens = torch.zeros((3, max_bs), dtype=torch.int64, pin_memory=True)
        self._host_tokens[2].fill_(-1)
        self._host_seq_lens = torch.zeros(max_bs, dtype=torch.int32, pin_memory=True)
        self._host_tables = torch.zeros((max_bs, self.max_blocks), dtype=torch.int32, pin_memory=True)
        self._staged = torch.cuda.Event()
        self._staged.record()
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self.replays: Counter[tuple[int, int]] = Counter()  # (bucket, num_splits) -> count

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    # -- capture ---------------------------------------------------------------
    def split_choices(self, bucket: int) -> list[int]:
        """Split-KV factors the eager launcher can pick for this bucket's batch
        sizes (previous bucket + 1 .. bucket) and contexts up to max_model_len,
        largest first. The choice falls with batch size and rises with context,
        and is a power of two."""
        index = self.buckets.index(bucket)
        smallest = self.buckets[index - 1] + 1 if index else 1
        most = self._eager_splits(smallest, (self.max_model_len,) + (1,) * (smallest - 1))
        return [1 << i for i in range(most.bit_length() - 1, -1, -1)]

    @torch.inference_mode()
    def capture(self, name: str = "model") -> None:
        torch.cuda.synchronize(self.device)
        free_before = torch.cuda.mem_get_info(self.device)[0]
        started = time.perf_counter()
        self._pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.buckets):
            input_ids = self._tokens[0, :bucket]
            for splits in self.split_choices(bucket):
                meta = self._static_meta(bucket, splits)
                self.model(input_ids, self.kv_cache, meta)  # compiles kernels; pads write nothing
                torch.cuda.synchronize(self.device)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    hidden = self.model(input_ids, self.kv_cache, meta)
                self._graphs[(bucket, splits)] = (graph, hidden)
        torch.cuda.synchronize(self.device)
        used = free_before - torch.cuda.mem_get_info(self.device)[0]
        logger.info("captured %d CUDA graphs of the %s decode step (batch sizes %s) in %.2f s, %.0f MiB",
                    len(self._graphs), name, ",".join(map(str, self.buckets)), time.perf_counter() - started,
                    used / _MIB)

    def _static_meta(self, bucket: int, splits: int) -> AttentionMetadata:
        return AttentionMetadata(
            positions=self._tokens[1, :bucket],
            slot_mapping=self._tokens[2, :bucket],
            block_tables=self._block_tables[:bucket],
            seq_lens=self._seq_lens[:bucket],
            query_start_loc=self._query_start_loc[:bucket + 1],
            seq_lens_host=(0,) * bucket,
            query_start_loc_host=tuple(range(bucket + 1)),
            block_size=self.block_size,
            num_splits=splits,
        )

    def _eager_splits(self, num_seqs: int, seq_lens: tuple[int, ...]) -> int:
        """The split-KV factor an eager launch picks for this decode batch."""
        from helix.worker.attention.triton_attention import choose_launch

        meta = AttentionMetadata(
            positions=self._tokens[1, :num_seqs], slot_mapping=self._tokens[2, :num_seqs],
            block_tables=self._block_tables[:num_seqs], seq_lens=self._seq_lens[:num_seqs],
            query_start_loc=self._query_start_loc[:num_seqs + 1], seq_lens_host=seq_lens,
            query_start_loc_host=tuple(range(num_seqs + 1)), block_size=self.block_size)
        num_heads, num_kv_heads, head_dim, dtype = self._heads
        return int(choose_launch(meta, num_heads, num_kv_heads, head_dim, dtype, self.device)["num_splits"])

    # -- replay ----------------------------------------------------------------
    def run(self, spans: Sequence[SequenceSpan], token_ids: Sequence[int]) -> torch.Tensor | None:
        """Hidden states [len(spans), hidden] from a graph replay, or None where
        the batch needs the eager path. Valid until this runner's next replay."""
        num_seqs = len(spans)
        if num_seqs == 0 or num_seqs > self.buckets[-1] or len(token_ids) != num_seqs:
            return None
        block_size = self.block_size
        positions, slots, seq_lens, tables = [], [], [], []
        for span in spans:
            position = span.num_computed
            num_blocks = position // block_size + 1
            if span.num_new != 1 or num_blocks > self.max_blocks or len(span.block_table) < num_blocks:
                return None
            table = span.block_table
            positions.append(position)
            slots.append(table[num_blocks - 1] * block_size + position % block_size)
            seq_lens.append(position + 1)
            tables.append(table[:num_blocks])
        bucket = self.buckets[bisect.bisect_left(self.buckets, num_seqs)]
        splits = self._eager_splits(num_seqs, tuple(seq_lens))
        entry = self._graphs.get((bucket, splits))
        if entry is None:
            return None
        self._stage(bucket, token_ids, positions, slots, seq_lens, tables)
        graph, hidden = entry
        graph.replay()
        self.replays[(bucket, splits)] += 1
        return hidden[:num_seqs]

    def _stage(self, bucket: int, token_ids: Sequence[int], positions: list[int], slots: list[int],
               seq_lens: list[int], tables: list[Sequence[int]]) -> None:
        num_seqs = len(positions)
        # The previous step's copies must have read the staging buffers.
        self._staged.synchronize()
        host = self._host_tokens
        host[:, :num_seqs] = torch.tensor([list(token_ids), positions, slots], dtype=torch.int64)
        host[:2, num_seqs:bucket] = 0
        host[2, num_seqs:bucket] = -1
        self._host_seq_lens[:num_seqs] = torch.tensor(seq_lens, dtype=torch.int32)
        self._host_seq_lens[num_seqs:bucket] = 0
        width = max(len(t) for t in tables)
        flat: list[int] = []
        for table in tables:
            flat.extend(table)
            flat.extend((0,) * (width - len(table)))
        self._host_tables[:num_seqs, :width] = torch.tensor(flat, dtype=torch.int32).view(num_seqs, width)
        # Rows past `bucket` are unused by this graph; copying the whole token
        # buffer keeps the copy contiguous. Table entries past each real row's
        # length (and padding rows' tables) are never read.
        self._tokens.copy_(host, non_blocking=True)
        self._seq_lens[:bucket].copy_(self._host_seq_lens[:bucket], non_blocking=True)
        self._block_tables[:num_seqs].copy_(self._host_tables[:num_seqs], non_blocking=True)
        self._staged.record()
