"""Paged attention kernels on the GPU: the PyTorch reference vs the Triton kernels.

TinyLlama-1.1B attention shape (32 query heads, 4 KV heads, head_dim 64),
block size 16, bf16. Cases: batch-1 decode at context 128/1k/4k/8k, batch-32
decode at 1k, 32 sequences x 5-token verification spans at 1k, and a 2048-token
prefill chunk. Times are medians from `triton.testing.do_bench` (which clears
the L2 cache before every call, so each call pays its own launches and reads
its K/V from device memory):

* `torch ms`: `torch_attention.paged_attention` (eager, one gather + einsum per
  sequence);
* `triton ms`: `triton_attention.paged_attention` (one launch, two when the
  context is split);
* `graph us`: the Triton call replayed in a CUDA graph, cycling over enough
  disjoint copies of the batch (distinct blocks) that their K/V exceed twice
  the L2 cache, so the number is kernel time with K/V from device memory.

For the decode cases the graph time is also taken under variants of the
launch tunables of `triton_attention` (general kernel instead of the decode
path, no split, fewer/more splits, other key tiles).

Bandwidth: bytes of K/V the batch must read (each context token's K and V
rows, once) over the time, against a measured device-to-device copy (bytes
read plus bytes written over time). Usage:

    PYTHONPATH=. python3 benchmarks/attention_kernels.py

Prints markdown tables and writes attention_bench.json under $OUT when set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import torch
import triton
from triton.testing import do_bench

from helix.worker.attention import torch_attention as reference
from helix.worker.attention import triton_attention as tri
from helix.worker.attention.metadata import SequenceSpan, build_attention_metadata

CUDA = torch.device("cuda")
HEADS, KV_HEADS, HEAD_DIM, BLOCK, DTYPE = 32, 4, 64, 16, torch.bfloat16
SCALE = HEAD_DIM ** -0.5
CASES = [
    ("decode b1 ctx128", [(127, 1)]),
    ("decode b1 ctx1k", [(1023, 1)]),
    ("decode b1 ctx4k", [(4095, 1)]),
    ("decode b1 ctx8k", [(8191, 1)]),
    ("decode b32 ctx1k", [(1023, 1)] * 32),
    ("verify 32x5 ctx1k", [(1019, 5)] * 32),
    ("prefill 1x2048", [(0, 2048)]),
]


class Batch:
    """`copies` disjoint instances of one batch shape in one cache (for rotation)."""

    def __init__(self, specs: list[tuple[int, int]], copies: int, seed: int = 0):
        gen = torch.Generator(device=CUDA).manual_seed(seed)
        need = [-(-(c + n) // BLOCK) for c, n in specs]
        per_copy = sum(need)
        num_blocks = per_copy * copies
        ids = list(range(num_blocks))
        random.Random(seed).shuffle(ids)
        self.kv_cache = torch.randn((2, num_blocks, BLOCK, KV_HEADS, HEAD_DIM), device=CUDA,
                                    generator=gen).to(DTYPE)
        self.metas = []
        for c in range(copies):
            i, spans = c * per_copy, []
            for (computed, new), k in zip(specs, need):
                spans.append(SequenceSpan(ids[i:i + k], computed, new))
                i += k
            self.metas.append(build_attention_metadata(spans, BLOCK, CUDA))
        meta = self.metas[0]
        self.query = torch.randn((meta.num_tokens, HEADS, HEAD_DIM), device=CUDA, generator=gen).to(DTYPE)
        self.kv_bytes = sum(meta.seq_lens_host) * KV_HEADS * HEAD_DIM * 2 * self.kv_cache.element_size()


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: (bytes read + bytes written) / time, in GB/s."""
    src = torch.randn(1 << 28, device=CUDA)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def graph_time_us(batch: Batch, calls: int, **kwargs) -> float:
    """Kernel time per call: a CUDA graph of `calls` calls cycling over the batch's copies."""
    out = torch.empty_like(batch.query)
    metas = batch.metas

    def body() -> None:
        for i in range(calls):
            tri.paged_attention_into(batch.query, batch.kv_cache, metas[i % len(metas)], SCALE, out=out, **kwargs)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median")
    return ms * 1e3 / calls


VARIANTS = {  # name: LaunchTuning fields that differ from the default
    "default": {},
    "general path": {"decode_path": False},
    "no split": {"no_split_below": 1 << 60},
    "splits>=256 keys": {"min_split_keys": 256},
    "4 programs/SM": {"programs_per_sm": 4, "max_splits": 128},
    "BLOCK_N 32": {"block_n": 32, "min_split_keys": 32},
    "BLOCK_N 64": {"block_n": 64},
    "BLOCK_N 128": {"block_n": 128},
}


def sweep_decode(batch: Batch, meta, calls: int) -> dict[str, float]:
    """Graph time of the decode kernel under each variant of the launch tunables."""
    results = {}
    for name, settings in VARIANTS.items():
        tuning = dataclasses.replace(tri.DEFAULT_TUNING, **settings)
        splits = tri.choose_launch(meta, HEADS, KV_HEADS, HEAD_DIM, DTYPE, CUDA, tuning=tuning)["num_splits"]
        results[f"{name} (s{splits})"] = graph_time_us(batch, calls, tuning=tuning)
    return results


def main() -> None:
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    device = torch.cuda.get_device_name(0)
    copy_gbs = copy_bandwidth()
    print(f"device: {device}; torch {torch.__version__}, triton {triton.__version__}; "
          f"D2D copy {copy_gbs:.0f} GB/s (read+write)")
    rows = []
    for name, specs in CASES:
        single = Batch(specs, 1)
        copies = max(1, min(64, -(-2 * l2 // max(1, single.kv_bytes))))
        batch = Batch(specs, copies)
        meta = batch.metas[0]
        cfg = tri.choose_launch(meta, HEADS, KV_HEADS, HEAD_DIM, DTYPE, CUDA)
        ref_out = reference.paged_attention(batch.query.float(), batch.kv_cache.float(), meta, SCALE)
        out = tri.paged_attention(batch.query, batch.kv_cache, meta, SCALE)
        err = ((out.double() - ref_out.double()).norm() / ref_out.double().norm()).item()
        t_ref = do_bench(lambda: reference.paged_attention(batch.query, batch.kv_cache, meta, SCALE),
                         warmup=10, rep=100, return_mode="median")
        t_tri = do_bench(lambda: tri.paged_attention(batch.query, batch.kv_cache, meta, SCALE),
                         warmup=10, rep=100, return_mode="median")
        calls = max(copies, 16)
        t_graph = graph_time_us(batch, calls)
        row = dict(case=name, torch_ms=t_ref, triton_ms=t_tri, graph_us=t_graph, kv_mb=batch.kv_bytes / 1e6,
                   rel_err=err, splits=cfg["num_splits"], block_q=cfg["block_q"], decode=cfg["decode"],
                   bw_gbs=batch.kv_bytes / (t_tri * 1e-3) / 1e9,
                   bw_graph_gbs=batch.kv_bytes / (t_graph * 1e-6) / 1e9)
        if cfg["decode"]:
            row["sweep_us"] = sweep_decode(batch, meta, calls)
        rows.append(row)
        print(f"  {name}: {row}", flush=True)

    print()
    print(f"Card: {device}. bf16, 32 heads / 4 KV heads, head_dim 64, block 16. "
          f"D2D copy: {copy_gbs:.0f} GB/s.")
    print()
    print("| case | K/V MB | torch ms | triton ms | speedup | graph us | splits | K/V GB/s (call) | "
          "K/V GB/s (graph) | % of copy BW (graph) | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['kv_mb']:.2f} | {r['torch_ms']:.3f} | {r['triton_ms']:.4f} | "
              f"{r['torch_ms'] / r['triton_ms']:.0f}x | {r['graph_us']:.1f} | {r['splits']} | "
              f"{r['bw_gbs']:.0f} | {r['bw_graph_gbs']:.0f} | {100 * r['bw_graph_gbs'] / copy_gbs:.0f}% | "
              f"{r['rel_err']:.1e} |")
    print()
    decode_rows = [r for r in rows if "sweep_us" in r]
    if decode_rows:
        names = list(decode_rows[0]["sweep_us"])
        print("Decode launch variants, graph us per call (sN: splits chosen):")
        print()
        print("| case | " + " | ".join(n.split(" (")[0] for n in names) + " |")
        print("| --- |" + " --- |" * len(names))
        for r in decode_rows:
            print(f"| {r['case']} | " + " | ".join(f"{v:.1f} ({k.split('(')[1]}" for k, v in r["sweep_us"].items())
                  + " |")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "attention_bench.json"), "w") as f:
            json.dump({"device": device, "copy_gbs": copy_gbs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
