"""Bandwidth of the decode linears: cuBLAS (`F.linear`) against a one-pass Triton
skinny kernel, at the suite's model shapes and 1 or 5 rows (decode, verify of
K = 4), each timed as 50 calls inside one CUDA graph, as Helix's captured
forwards run them. Weights rotate through copies larger than L2 together.

    PYTHONPATH=. python3 benchmarks/linear_bandwidth.py [--skip-triton]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from benchmarks.suite.roofline import copy_bandwidth_bytes_per_s

# name: (in_features, out_features)
SHAPES = {
    "A qkv": (2048, 2560), "A o": (2048, 2048), "A gate_up": (2048, 11264), "A down": (5632, 2048),
    "A lm_head": (2048, 32000),
    "B qkv": (4096, 6144), "B o": (4096, 4096), "B gate_up": (4096, 28672), "B down": (14336, 4096),
    "B lm_head": (4096, 128256),
    "draft A qkv": (768, 2304), "draft A gate_up": (768, 6144), "draft A down": (3072, 768),
}
_L2_BYTES = 200e6  # weight copies per shape cover this much, so calls read HBM


def graph_seconds(call: Callable[[], None], reps: int = 50) -> float:
    """Seconds per call: the best of five replays of a graph of `reps` calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / reps)
    return best


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[m, n] = sum_k x[m, k] * w[n, k]: this program's BLOCK_N outputs, all of K in fp32."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask, m_mask = offs_n < N, offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_K]
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_K]
        if BLOCK_M == 1:
            acc += tl.sum(w * x, axis=1)[None, :]
        else:
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, block_n: int, block_k: int, warps: int,
                  stages: int) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T with one Triton program per `block_n` outputs over all of K."""
    rows, inner = x.shape
    out = torch.empty((rows, weight.shape[0]), dtype=x.dtype, device=x.device)
    _skinny_kernel[(triton.cdiv(weight.shape[0], block_n),)](
        x, weight, out, rows, weight.shape[0], inner, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=triton.next_power_of_2(rows), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def best_skinny(x: torch.Tensor, weights: list[torch.Tensor]) -> tuple[float, tuple[int, int, int, int]]:
    """The fastest configuration that matches cuBLAS (relative error under 2%)."""
    reference = F.linear(x.float(), weights[0].float())
    best = (float("inf"), (0, 0, 0, 0))
    for config in itertools.product((4, 8, 16), (256, 512), (4, 8), (2, 3)):
        if x.shape[0] > 1 and config[0] * config[1] > 2048:
            continue
        error = (skinny_linear(x, weights[0], *config).float() - reference).abs().max() / reference.abs().max()
        if error > 2e-2:
            continue
        turn = itertools.cycle(weights)
        seconds = graph_seconds(lambda: skinny_linear(x, next(turn), *config))
        best = min(best, (seconds, config))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-triton", action="store_true", help="cuBLAS only.")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {copy_bandwidth_bytes_per_s(device) / 1e12:.2f} TB/s")
    for name, (inner, outer) in SHAPES.items():
        size = inner * outer * 2
        weights = [torch.randn(outer, inner, dtype=torch.bfloat16, device=device) / 30
                   for _ in range(int(_L2_BYTES // size) + 1)]
        for rows in (1, 5):
            x = torch.randn(rows, inner, dtype=torch.bfloat16, device=device)
            turn = itertools.cycle(weights)
            cublas = graph_seconds(lambda: F.linear(x, next(turn)))
            line = (f"{name:16s} {size / 1e6:7.1f} MB M={rows}: "
                    f"cuBLAS {cublas * 1e6:6.1f} us {size / cublas / 1e12:.2f} TB/s")
            if not args.skip_triton:
                seconds, config = best_skinny(x, weights)
                line += (f" | Triton {seconds * 1e6:6.1f} us {size / seconds / 1e12:.2f} TB/s "
                         f"(block_n, block_k, warps, stages) = {config}, x{cublas / seconds:.2f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
