"""Triton paged attention and KV writes against the PyTorch reference, on CUDA.

Skipped where CUDA or Triton is absent (CI); run on a GPU machine before
calling attention work done.

Every test draws fresh random inputs (the seed is in each failure message),
poisons what the kernels must write (the output is filled with NaN, and so is
memory the caching allocator hands out next, for the split-KV partials) and
fills every cache slot outside the sequences' contexts with NaN, so a kernel
that skips an output element or reads a key it should not ends in NaN. The
reference is `torch_attention.paged_attention` run in fp32 on the same
(bf16) inputs, and the check is the relative error ||out - ref|| / ||ref||.

Bounds: bf16 1e-2. The inputs are the same values on both sides, so the
error is the kernel's own rounding: its output is rounded to bf16 (up to 2^-9,
about 2e-3, per element; about 1e-3 RMS) and the softmax weights are rounded
to bf16 for the P.V product (a term of the same size that averages out over
the keys). Together that is 2-4e-3; 1e-2 leaves room for it while any
indexing, masking or softmax bug costs O(0.1-1). fp16 (2^-11 rounding): 2.5e-3.
fp32 (exact, non-TF32 dot products): 1e-5.
"""

from __future__ import annotations

import random

import pytest
import torch

from helix.worker.attention import torch_attention as reference
from helix.worker.attention import triton_attention as tri
from helix.worker.attention.metadata import AttentionMetadata, SequenceSpan, build_attention_metadata
from tests.gpu.kernel_checks import fresh_seed, poison_allocator, report

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and tri.AVAILABLE), reason="needs CUDA and Triton")
CUDA = torch.device("cuda")
BOUNDS = {torch.bfloat16: 1e-2, torch.float16: 2.5e-3, torch.float32: 1e-5}
GQA_SHAPES = [(32, 32), (32, 8), (32, 4)]  # (num_heads, num_kv_heads): group 1, 4, 8
_ERRORS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors(request: pytest.FixtureRequest):
    yield
    if not _ERRORS:
        return
    worst = max(_ERRORS.items(), key=lambda kv: kv[1])
    lines = [f"triton attention: {len(_ERRORS)} comparisons, max relative error {worst[1]:.3e} ({worst[0]})"]
    by_dtype: dict[str, float] = {}
    for name, err in _ERRORS.items():
        dtype = name.split("|")[0]
        by_dtype[dtype] = max(by_dtype.get(dtype, 0.0), err)
    lines += [f"  max relative error {dtype}: {err:.3e} (bound {BOUNDS[getattr(torch, dtype)]:.0e})"
              for dtype, err in sorted(by_dtype.items())]
    report(request, lines, "attention_errors.json", {"max_by_dtype": by_dtype, "all": _ERRORS})


class Case:
    """A paged cache holding each sequence's context, a query for each span, and metadata."""

    def __init__(self, specs: list[tuple[int, int]], num_heads: int, num_kv_heads: int, head_dim: int,
                 block_size: int, dtype: torch.dtype = torch.bfloat16, seed: int | None = None,
                 table_blocks: int | None = None, spare_blocks: int = 5):
        self.seed = fresh_seed() if seed is None else seed
        rng = random.Random(self.seed)
        gen = torch.Generator(device=CUDA).manual_seed(self.seed)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.block_size, self.dtype = block_size, dtype
        need = [table_blocks or -(-(c + n) // block_size) for c, n in specs]
        num_blocks = sum(need) + spare_blocks
        ids = list(range(num_blocks))
        rng.shuffle(ids)  # non-contiguous, out-of-order block tables
        self.spans, i = [], 0
        for (computed, new), k in zip(specs, need):
            self.spans.append(SequenceSpan(ids[i:i + k], computed, new))
            i += k
        # Unwritten slots hold NaN: reading one poisons the output.
        self.kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"),
                                   dtype=dtype, device=CUDA)
        past = build_attention_metadata([SequenceSpan(s.block_table, 0, s.num_computed) for s in self.spans],
                                        block_size, CUDA)
        self.meta = build_attention_metadata(self.spans, block_size, CUDA)
        self._write(past.slot_mapping, past.num_tokens, gen, use_triton=False)
        self._write(self.meta.slot_mapping, self.meta.num_tokens, gen, use_triton=True)
        self.query = (torch.randn(self.meta.num_tokens, num_heads, head_dim, device=CUDA, generator=gen)
                      * 2).to(dtype)
        self.scale = head_dim ** -0.5

    def _write(self, slots: torch.Tensor, n: int, gen: torch.Generator, use_triton: bool) -> None:
        shape = (n, self.num_kv_heads, self.head_dim)
        key = torch.randn(shape, device=CUDA, generator=gen).to(self.dtype)
        value = torch.randn(shape, device=CUDA, generator=gen).to(self.dtype)
        (tri.write_kv if use_triton else reference.write_kv)(key, value, self.kv_cache, slots)

    def reference(self, window: int | None = None, meta: AttentionMetadata | None = None,
                  query: torch.Tensor | None = None) -> torch.Tensor:
        query = self.query if query is None else query
        return reference.paged_attention(query.float(), self.kv_cache.float(), meta or self.meta,
                                         self.scale, window)

    def run(self, window: int | None = None, num_splits: int | None = None) -> torch.Tensor:
        poison_allocator(CUDA)
        out = torch.full_like(self.query, float("nan"))
        tri.paged_attention_into(self.query, self.kv_cache, self.meta, self.scale, window, out=out,
                                 num_splits=num_splits)
        return out

    def check(self, name: str, window: int | None = None, num_splits: int | None = None) -> float:
        out = self.run(window, num_splits)
        torch.cuda.synchronize()
        return check_close(name, self, out, self.reference(window))


def check_close(name: str, case: Case, out: torch.Tensor, ref: torch.Tensor) -> float:
    dtype_name = str(case.dtype).removeprefix("torch.")
    assert out.dtype == case.dtype and out.shape == ref.shape
    assert not torch.isnan(out).any(), f"{name}: unwritten or poisoned output (seed {case.seed})"
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    _ERRORS[f"{dtype_name}|{name}"] = err
    bound = BOUNDS[case.dtype]
    assert err < bound, f"{name}: relative error {err:.3e} >= {bound:.0e} (seed {case.seed})"
    return err


# ----------------------------------------------------------------------------- write_kv

@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(4, 64), (8, 128), (32, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_write_kv_equals_reference(block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    _check_write_kv(block_size, num_kv_heads, head_dim, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_write_kv_other_dtypes(dtype: torch.dtype) -> None:
    _check_write_kv(16, 8, 128, dtype)


def _check_write_kv(block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    seed = fresh_seed()
    gen = torch.Generator(device=CUDA).manual_seed(seed)
    num_blocks, num_tokens = 97, 533
    cache = torch.randn((2, num_blocks, block_size, num_kv_heads, head_dim), device=CUDA, generator=gen).to(dtype)
    expected = cache.clone()
    # K and V as strided views of one fused projection, as the model produces them.
    qkv = torch.randn((num_tokens, 3 * num_kv_heads * head_dim), device=CUDA, generator=gen).to(dtype)
    _, key, value = qkv.split(num_kv_heads * head_dim, dim=-1)
    key = key.view(num_tokens, num_kv_heads, head_dim)
    value = value.view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=CUDA, generator=gen)[:num_tokens]
    reference.write_kv(key, value, expected, slots)
    tri.write_kv(key, value, cache, slots)
    assert torch.equal(cache, expected), f"seed {seed}"


def test_write_kv_skips_negative_slots() -> None:
    cache = torch.randn((2, 8, 16, 4, 64), device=CUDA).to(torch.bfloat16)
    before = cache.clone()
    key = torch.randn((3, 4, 64), device=CUDA).to(torch.bfloat16)
    tri.write_kv(key, key, cache, torch.tensor([-1, 5, -1], device=CUDA))
    expected = before.clone()
    reference.write_kv(key[1:2], key[1:2], expected, torch.tensor([5], device=CUDA))
    assert torch.equal(cache, expected)


# ----------------------------------------------------------------------------- attention

# Decode: one token per sequence, contexts from 1 to 8192, one idle sequence.
DECODE_SPECS = [(0, 1), (1, 1), (16, 1), (127, 1), (999, 1), (50, 0), (4095, 1), (8191, 1)]
# Mixed: prefill from scratch, chunks appended to cached context (one reaching
# 8192), decode tokens, 5-token verification spans, and an empty span.
MIXED_SPECS = [(0, 300), (1500, 257), (999, 1), (0, 1), (4095, 1), (700, 5), (31, 5), (8187, 5), (40, 0),
               (7680, 512), (2, 5)]


def _shuffled(specs: list[tuple[int, int]], seed: int) -> list[tuple[int, int]]:
    specs = list(specs)
    random.Random(seed).shuffle(specs)
    return specs


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", GQA_SHAPES)
@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_batch(block_size: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    seed = fresh_seed()
    case = Case(_shuffled(DECODE_SPECS, seed), num_heads, num_kv_heads, head_dim, block_size, seed=seed)
    assert tri.choose_launch(case.meta, num_heads, num_kv_heads, head_dim, case.dtype, CUDA)["decode"]
    case.check(f"decode bs{block_size} h{num_heads}/{num_kv_heads} d{head_dim}")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_heads,num_kv_heads", GQA_SHAPES)
@pytest.mark.parametrize("block_size", [16, 32])
def test_mixed_batch(block_size: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    seed = fresh_seed()
    case = Case(_shuffled(MIXED_SPECS, seed), num_heads, num_kv_heads, head_dim, block_size, seed=seed)
    case.check(f"mixed bs{block_size} h{num_heads}/{num_kv_heads} d{head_dim}")


@pytest.mark.parametrize("block_size,num_heads,num_kv_heads,head_dim,window", [
    (16, 32, 8, 128, 1),
    (16, 32, 4, 64, 37),
    (32, 32, 32, 64, 256),
    (32, 32, 4, 128, 4096),
])
@pytest.mark.parametrize("kind", ["decode", "mixed"])
def test_sliding_window(kind: str, block_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                        window: int) -> None:
    seed = fresh_seed()
    specs = DECODE_SPECS if kind == "decode" else MIXED_SPECS
    case = Case(_shuffled(specs, seed), num_heads, num_kv_heads, head_dim, block_size, seed=seed)
    case.check(f"window{window} {kind} bs{block_size} h{num_heads}/{num_kv_heads} d{head_dim}", window=window)


@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
@pytest.mark.parametrize("kind", ["decode", "mixed"])
def test_forced_splits(kind: str, num_splits: int) -> None:
    """Split-KV on every kind of span (the heuristic only splits small batches)."""
    seed = fresh_seed()
    specs = DECODE_SPECS if kind == "decode" else MIXED_SPECS
    case = Case(_shuffled(specs, seed), 32, 4, 64, 16, seed=seed)
    case.check(f"splits{num_splits} {kind}", num_splits=num_splits)
    case.check(f"splits{num_splits} {kind} window100", window=100, num_splits=num_splits)


def test_large_decode_batch() -> None:
    """Batch 128 of mixed lengths: enough programs that the heuristic does not split."""
    seed = fresh_seed()
    rng = random.Random(seed)
    specs = [(rng.randrange(0, 2048), 1) for _ in range(128)]
    case = Case(specs, 32, 4, 64, 16, seed=seed)
    assert tri.choose_launch(case.meta, 32, 4, 64, case.dtype, CUDA)["num_splits"] == 1
    case.check("decode batch128")


def test_verification_batch() -> None:
    """32 sequences x 5-token verification spans, the speculative-decoding step."""
    seed = fresh_seed()
    rng = random.Random(seed)
    specs = [(rng.randrange(0, 3000), 5) for _ in range(32)]
    case = Case(specs, 32, 4, 64, 16, seed=seed)
    case.check("verify 32x5")
    case.check("verify 32x5 window64", window=64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("kind", ["decode", "mixed"])
def test_other_dtypes(kind: str, dtype: torch.dtype) -> None:
    seed = fresh_seed()
    specs = DECODE_SPECS if kind == "decode" else MIXED_SPECS
    case = Case(_shuffled(specs, seed), 32, 8, 128, 16, dtype=dtype, seed=seed)
    case.check(f"{kind} h32/8 d128")


@pytest.mark.parametrize("block_size,num_heads,num_kv_heads,head_dim", [
    (4, 4, 2, 16),    # tiny test models
    (8, 4, 1, 32),
    (64, 8, 8, 80),   # head_dim not a power of two
])
def test_small_shapes(block_size: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    seed = fresh_seed()
    specs = [(0, 9), (3, 1), (37, 5), (0, 0), (100, 40), (12, 1)]
    case = Case(_shuffled(specs, seed), num_heads, num_kv_heads, head_dim, block_size, seed=seed)
    case.check(f"small bs{block_size} h{num_heads}/{num_kv_heads} d{head_dim}")
    case.check(f"small bs{block_size} h{num_heads}/{num_kv_heads} d{head_dim} window3", window=3)


def test_public_entry_point_and_empty_batch() -> None:
    case = Case([(10, 3), (0, 1)], 8, 2, 64, 16)
    out = tri.paged_attention(case.query, case.kv_cache, case.meta, case.scale)
    check_close("public paged_attention", case, out, case.reference())
    empty = build_attention_metadata([SequenceSpan([0], 5, 0)], 16, CUDA)
    query = torch.empty((0, 8, 64), dtype=torch.bfloat16, device=CUDA)
    assert tri.paged_attention(query, case.kv_cache, empty, case.scale).shape == (0, 8, 64)


def test_noncontiguous_query() -> None:
    """q as the model has it: a strided view of the fused qkv projection."""
    case = Case(_shuffled(MIXED_SPECS, 3), 32, 4, 64, 16)
    qkv = torch.randn((case.meta.num_tokens, (32 + 8) * 64), device=CUDA).to(torch.bfloat16)
    query = qkv[:, :32 * 64].view(-1, 32, 64)
    assert not query.is_contiguous()
    out = tri.paged_attention(query, case.kv_cache, case.meta, case.scale)
    check_close("strided query", case, out, case.reference(query=query))


@pytest.mark.parametrize("kind", ["decode", "verify"])
def test_cuda_graph_replay_with_new_metadata(kind: str) -> None:
    """Captured once, replayed on other sequences of the same batch shape."""
    num_seqs, q_len = 8, (1 if kind == "decode" else 5)
    table_blocks = 4096 // 16
    seed = fresh_seed()
    rng = random.Random(seed)
    first = Case([(rng.randrange(0, 4000), q_len) for _ in range(num_seqs)], 32, 4, 64, 16, seed=seed,
                 table_blocks=table_blocks)
    # The second batch lives in the same cache: new lengths, new blocks, new queries.
    second_specs = [(rng.randrange(0, 4000), q_len) for _ in range(num_seqs)]
    second = Case(second_specs, 32, 4, 64, 16, seed=seed + 1, table_blocks=table_blocks)
    cfg = tri.choose_launch(first.meta, 32, 4, 64, first.dtype, CUDA)
    static_q = first.query.clone()
    out = torch.full_like(static_q, float("nan"))
    meta = first.meta

    def step() -> None:
        tri.paged_attention_into(static_q, first.kv_cache, meta, first.scale, None, out=out,
                                 num_splits=cfg["num_splits"])

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    check_close(f"graph {kind} first", first, out, first.reference())

    # Swap in the second batch: same shapes (fixed-width block tables), new
    # cache contents, lengths, block tables and queries.
    assert second.kv_cache.shape == first.kv_cache.shape
    first.kv_cache.copy_(second.kv_cache)
    meta.block_tables.copy_(second.meta.block_tables)
    meta.seq_lens.copy_(second.meta.seq_lens)
    meta.query_start_loc.copy_(second.meta.query_start_loc)
    static_q.copy_(second.query)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    check_close(f"graph {kind} second", second, out, second.reference())
