"""CUDA graphs for decode and verify forwards: every span has the same small
number q of query tokens (q = 1 for decode; q = 1 + K for speculative
verification, shorter spans padded up to q).

A small-batch step is launch- and host-bound: ~15 kernels per layer, each
costing more host time than GPU time. `GraphRunner` captures
`model(input_ids, kv_cache, meta) -> hidden` once per (bucketed batch size, q)
and replays it, so a step costs a few small host-to-device copies and one
graph launch.

Static inputs live in preallocated device buffers (input ids, positions, slot
mapping, block tables [bucket, max_blocks_per_seq], sequence lengths, query
start offsets); a batch of n sequences runs the graph of the smallest bucket
>= n. Sequence i's tokens are rows i*q .. i*q + q - 1 of the output. Padding is
harmless: padding rows (whole sequences past n) have slot -1 (the Triton
`write_kv` skips it) and sequence length 0, so their attention reads no key.
Padding tokens inside a span (a verify span shorter than q) come after the
real ones: they write no K/V (slot -1), and the causal mask keeps every real
token from attending to them; their own outputs are never read. Real rows
read only blocks their length covers, so stale table entries are never read
by them.

Attention goes through the Triton kernels, whose launch depends on host data
only through the split-KV factor; it is pinned per graph (`AttentionMetadata.
num_splits`). Each (bucket, q) is captured once for every factor the eager
launcher could choose for that bucket's batch sizes up to max_model_len, and a
replay uses the factor the eager path would choose for the padded batch.

All graphs of one runner share one memory pool, largest first. A replay's
output is valid until the runner's next replay. Batches with more sequences
than the largest bucket for their q, spans longer than the largest q, or
contexts beyond max_model_len fall back to eager (`run` returns None).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

from helix.worker.attention.metadata import AttentionMetadata, SequenceSpan
from helix.worker.models import LlamaForCausalLM
from helix.worker.token_feed import PositionShift, TokenFeed

logger = logging.getLogger(__name__)
Result = TypeVar("Result")

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Verification (q > 1) pays off at small batches; larger ones run eagerly.
MAX_VERIFY_BUCKET = 16
_MIB = 1 << 20


@dataclass(frozen=True)
class DecodeGraphSpec:
    """What graph capture needs from the engine configuration."""

    max_num_seqs: int
    max_model_len: int
    max_query_len: int = 1  # longest span the target's graphs take: 1 + K with speculation
    round_ks: tuple[int, ...] = ()  # the K values of chained speculative rounds (none: no round graphs)
    max_rounds: int = 1  # rounds per chained multi-step (num_scheduler_steps)


def graph_buckets(max_num_seqs: int, query_len: int = 1) -> tuple[int, ...]:
    """Captured batch sizes: the powers of two up to max_num_seqs (at most 256;
    at most MAX_VERIFY_BUCKET for verify spans)."""
    cap = max(1, max_num_seqs) if query_len == 1 else min(max(1, max_num_seqs), MAX_VERIFY_BUCKET)
    return tuple(b for b in BUCKETS if b <= cap)


def fill_block_tables(host_tables: Any, tables: Sequence[Sequence[int]]) -> None:
    """Write block tables into the first rows of a host staging array (numpy
    [rows, max blocks]), zeroing each row out to the widest table."""
    width = max(len(table) for table in tables)
    for row, table in enumerate(tables):
        host_tables[row, :len(table)] = table
        host_tables[row, len(table):width] = 0


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection while graphs are captured. Collecting an object that
    owns CUDA events or pinned memory (a dropped engine's) calls into CUDA, which
    a capture forbids: the capture would be invalidated, and the process's CUDA
    state with it. What is already garbage is collected first."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def warmed_capture(run: Callable[[], Result], pool: Any, device: torch.device | None = None
                   ) -> tuple[torch.cuda.CUDAGraph, Result]:
    """Run `run` once (Triton compiles its kernels; its static inputs must be
    padding that writes nothing), then capture a second run into a graph that
    allocates from `pool`. Returns the graph and the captured run's result."""
    run()
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        result = run()
    return graph, result


def capture_graphs(model: LlamaForCausalLM, kv_cache: torch.Tensor, block_size: int,
                   spec: DecodeGraphSpec | None, query_lens: Sequence[int] = (1,),
                   name: str = "model") -> GraphRunner | None:
    """A captured runner where graphs apply (CUDA, Triton attention usable), else None.
    `query_lens`: the span lengths q to capture (1: decode; 1 + K: verify)."""
    if spec is None or not graphs_supported(model, kv_cache):
        return None
    runner = GraphRunner(model, kv_cache, block_size, spec.max_model_len, spec.max_num_seqs, query_lens)
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


# Replays staged ahead of the device at most (a multi-step stages each of its
# forwards while earlier ones run).
_STAGING_DEPTH = 4


class _HostStaging:
    """Pinned host buffers for one replay's inputs, with numpy views (filling
    them from lists costs no tensor ops) and an event after their copies."""

    def __init__(self, max_tokens: int, max_seqs: int, max_blocks: int):
        self.tokens = torch.zeros((3, max_tokens), dtype=torch.int64, pin_memory=True)  # ids, positions, slots
        self.seq_lens = torch.zeros(max_seqs, dtype=torch.int32, pin_memory=True)
        self.tables = torch.zeros((max_seqs, max_blocks), dtype=torch.int32, pin_memory=True)
        self.tokens_np = self.tokens.numpy()
        self.seq_lens_np = self.seq_lens.numpy()
        self.tables_np = self.tables.numpy()
        self.copied = torch.cuda.Event()
        self.copied.record()


class GraphRunner:
    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, block_size: int, max_model_len: int,
                 max_num_seqs: int, query_lens: Sequence[int] = (1,)):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.buckets = {q: graph_buckets(max_num_seqs, q) for q in sorted(set(query_lens))}
        self.max_query_len = max(self.buckets)
        # Padding tokens of a span may reach q - 1 positions past max_model_len.
        self.max_blocks = -(-(max_model_len + self.max_query_len - 1) // block_size)
        self.device = kv_cache.device
        arch = model.arch
        self._heads = (arch.num_heads, arch.num_kv_heads, arch.head_dim, kv_cache.dtype)
        max_bs = max(b[-1] for b in self.buckets.values())
        max_tokens = max(q * b[-1] for q, b in self.buckets.items())
        # Static device inputs: rows of _tokens are input ids, positions, slots.
        self._tokens = torch.zeros((3, max_tokens), dtype=torch.int64, device=self.device)
        self._tokens[2].fill_(-1)
        self._seq_lens = torch.zeros(max_bs, dtype=torch.int32, device=self.device)
        self._block_tables = torch.zeros((max_bs, self.max_blocks), dtype=torch.int32, device=self.device)
        self._query_start_loc = {q: torch.arange(0, q * (max_bs + 1), q, dtype=torch.int32, device=self.device)
                                 for q in self.buckets}
        self.row_indices = torch.arange(max_bs, dtype=torch.int64, device=self.device)
        # Pinned staging, used in turn, so the host can stage a few replays ahead of the device.
        self._staging = [_HostStaging(max_tokens, max_bs, self.max_blocks) for _ in range(_STAGING_DEPTH)]
        self._num_staged = 0
        # Memoised split choice, bounded: a long-running server sees many context lengths.
        self._splits_for = functools.lru_cache(maxsize=4096)(self._split_for_longest)
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self.replays: Counter[tuple[int, int, int]] = Counter()  # (bucket, q, num_splits) -> count

    @property
    def memory_pool(self) -> tuple[int, int] | None:
        """The pool every graph of this runner allocates from (for graphs built on top of it)."""
        return self._pool

    def splits_for(self, num_seqs: int, query_len: int, max_seq_len: int) -> int:
        """The split-KV factor an eager launch picks for this batch shape (memoised)."""
        return self._splits_for(num_seqs, query_len, max_seq_len)

    # -- capture ---------------------------------------------------------------
    def split_choices(self, bucket: int, query_len: int = 1) -> list[int]:
        """Split-KV factors the eager launcher can pick for this bucket's batch
        sizes (previous bucket + 1 .. bucket) and contexts up to max_model_len,
        largest first. The choice falls with batch size and rises with context,
        and is a power of two."""
        buckets = self.buckets[query_len]
        index = buckets.index(bucket)
        smallest = buckets[index - 1] + 1 if index else 1
        most = self._eager_splits(smallest, (self.max_model_len,) + (query_len,) * (smallest - 1), query_len)
        return [1 << i for i in range(most.bit_length() - 1, -1, -1)]

    @torch.inference_mode()
    def capture(self, name: str = "model") -> None:
        torch.cuda.synchronize(self.device)
        free_before = torch.cuda.mem_get_info(self.device)[0]
        started = time.perf_counter()
        self._pool = torch.cuda.graph_pool_handle()
        shapes = sorted(((q, b) for q, buckets in self.buckets.items() for b in buckets),
                        key=lambda shape: -shape[0] * shape[1])
        with collection_paused():
            for query_len, bucket in shapes:
                input_ids = self._tokens[0, :bucket * query_len]
                for splits in self.split_choices(bucket, query_len):
                    meta = self._static_meta(bucket, query_len, splits)
                    self._graphs[(bucket, query_len, splits)] = warmed_capture(
                        functools.partial(self.model, input_ids, self.kv_cache, meta), self._pool, self.device)
        torch.cuda.synchronize(self.device)
        used = free_before - torch.cuda.mem_get_info(self.device)[0]
        logger.info("captured %d CUDA graphs of the %s forward (query lengths %s; batch sizes %s) in %.2f s, "
                    "%.0f MiB", len(self._graphs), name, ",".join(map(str, self.buckets)),
                    ",".join(map(str, self.buckets[1])), time.perf_counter() - started, used / _MIB)

    def _static_meta(self, bucket: int, query_len: int, splits: int) -> AttentionMetadata:
        num_tokens = bucket * query_len
        return AttentionMetadata(
            positions=self._tokens[1, :num_tokens],
            slot_mapping=self._tokens[2, :num_tokens],
            block_tables=self._block_tables[:bucket],
            seq_lens=self._seq_lens[:bucket],
            query_start_loc=self._query_start_loc[query_len][:bucket + 1],
            seq_lens_host=(0,) * bucket,
            query_start_loc_host=tuple(range(0, num_tokens + 1, query_len)),
            block_size=self.block_size,
            num_splits=splits,
        )

    def _eager_splits(self, num_seqs: int, seq_lens: tuple[int, ...], query_len: int) -> int:
        """The split-KV factor an eager launch picks for this (padded) batch."""
        from helix.worker.attention.triton_attention import choose_launch

        num_tokens = num_seqs * query_len
        meta = AttentionMetadata(
            positions=self._tokens[1, :num_tokens], slot_mapping=self._tokens[2, :num_tokens],
            block_tables=self._block_tables[:num_seqs], seq_lens=self._seq_lens[:num_seqs],
            query_start_loc=self._query_start_loc[query_len][:num_seqs + 1], seq_lens_host=seq_lens,
            query_start_loc_host=tuple(range(0, num_tokens + 1, query_len)), block_size=self.block_size)
        num_heads, num_kv_heads, head_dim, dtype = self._heads
        return int(choose_launch(meta, num_heads, num_kv_heads, head_dim, dtype, self.device)["num_splits"])

    def _split_for_longest(self, num_seqs: int, query_len: int, max_seq_len: int) -> int:
        """`_eager_splits` by the longest sequence: the launcher reads the sequence
        lengths only through their maximum, so a batch whose longest is
        max_seq_len chooses as one where all are that long."""
        return self._eager_splits(num_seqs, (max_seq_len,) * num_seqs, query_len)

    # -- replay ----------------------------------------------------------------
    def run(self, spans: Sequence[SequenceSpan], token_ids: Sequence[int], feeds: Sequence[TokenFeed] = (),
            shift: PositionShift | None = None) -> tuple[torch.Tensor, int] | None:
        """(hidden [len(spans) * q, hidden], q) from a graph replay, where span i's
        tokens are rows i*q onwards; or None where the batch needs the eager
        path. Valid until this runner's next replay. `feeds`: input tokens that
        only the device has yet, copied in after the staged ids. `shift`: spans
        start that much later (on the device; every span then has q tokens)."""
        num_seqs = len(spans)
        query_len = max((span.num_new for span in spans), default=0)
        buckets = self.buckets.get(query_len)
        if buckets is None or num_seqs == 0 or num_seqs > buckets[-1] or len(token_ids) != sum(
                span.num_new for span in spans):
            return None
        if shift is not None and any(span.num_new != query_len for span in spans):
            return None
        most = shift.most if shift is not None else 0
        staged = self._stage_rows(spans, token_ids, query_len, most)
        if staged is None:
            return None
        bucket = buckets[bisect.bisect_left(buckets, num_seqs)]
        splits = self.splits_for(num_seqs, query_len, max(staged[3]) + most)
        entry = self._graphs.get((bucket, query_len, splits))
        if entry is None:
            return None
        self._stage(bucket, query_len, *staged)
        for feed in feeds:
            feed.apply(self._tokens[0], range(0, num_seqs * query_len, query_len))
        if shift is not None:
            num_tokens = num_seqs * query_len
            shift.apply(self._tokens[1, :num_tokens].view(num_seqs, query_len), self._seq_lens[:num_seqs],
                        self._tokens[2, :num_tokens].view(num_seqs, query_len), self._block_tables[:num_seqs],
                        self.block_size)
        graph, hidden = entry
        graph.replay()
        self.replays[(bucket, query_len, splits)] += 1
        return hidden[:num_seqs * query_len], query_len

    def _stage_rows(self, spans: Sequence[SequenceSpan], token_ids: Sequence[int], query_len: int, most: int
                    ) -> tuple[list[int], list[int], list[int], list[int], list[Sequence[int]]] | None:
        """Host rows of the padded batch: ids, positions, slots (per token), sequence
        lengths and block tables (per sequence); None if a span, shifted by up to
        `most` positions, does not fit. Tables cover the shifted span."""
        block_size = self.block_size
        ids, positions, slots, seq_lens, tables = [], [], [], [], []
        offset = 0
        for span in spans:
            start, count = span.num_computed, span.num_new
            padded_len = start + query_len
            num_blocks = -(-(padded_len + most) // block_size)
            if count < 1 or start + count + most > self.max_model_len or num_blocks > self.max_blocks:
                return None
            table = span.block_table
            if len(table) * block_size < start + count + most:
                return None
            ids.extend(token_ids[offset:offset + count])
            ids.extend((0,) * (query_len - count))
            offset += count
            real = range(start, start + count)
            positions.extend(real)
            positions.extend((start + count - 1,) * (query_len - count))  # pads reuse a valid RoPE position
            slots.extend(table[p // block_size] * block_size + p % block_size for p in real)
            slots.extend((-1,) * (query_len - count))
            seq_lens.append(padded_len)
            tables.append(table[:num_blocks])
        return ids, positions, slots, seq_lens, tables

    def _stage(self, bucket: int, query_len: int, ids: list[int], positions: list[int], slots: list[int],
               seq_lens: list[int], tables: list[Sequence[int]]) -> None:
        num_seqs, num_tokens = len(seq_lens), len(ids)
        padded_tokens = bucket * query_len
        staging = self._staging[self._num_staged % _STAGING_DEPTH]
        self._num_staged += 1
        # The copies that last used these buffers must have read them.
        staging.copied.synchronize()
        host = staging.tokens_np
        host[0, :num_tokens], host[1, :num_tokens], host[2, :num_tokens] = ids, positions, slots
        host[:2, num_tokens:padded_tokens] = 0
        host[2, num_tokens:padded_tokens] = -1
        staging.seq_lens_np[:num_seqs] = seq_lens
        staging.seq_lens_np[num_seqs:bucket] = 0
        fill_block_tables(staging.tables_np, tables)
        # Table entries past each real row's length (and padding rows' tables) are
        # never read by real rows; stale ones are still valid block ids. Tokens past
        # `padded_tokens` are unused by this graph; copying the whole (small) token
        # buffer keeps the copy contiguous.
        self._tokens.copy_(staging.tokens, non_blocking=True)
        self._seq_lens[:bucket].copy_(staging.seq_lens[:bucket], non_blocking=True)
        self._block_tables[:num_seqs].copy_(staging.tables[:num_seqs], non_blocking=True)
        staging.copied.record()

