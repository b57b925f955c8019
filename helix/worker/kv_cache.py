"""Allocation and sizing of the paged KV cache tensor.

One tensor holds every layer: [num_layers, 2, num_blocks, block_size,
num_kv_heads, head_dim], where index 0 of dim 1 is keys and 1 is values.
Moving a block (swap, copy) is then one indexed copy over dim 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helix.engine_args import EngineArgs
from helix.worker.models.arch import ArchConfig

_GIB = 1 << 30


def bytes_per_block(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return arch.num_layers * 2 * block_size * arch.num_kv_heads * arch.head_dim * element_size


def num_blocks_for_budget(cache: EngineArgs, block_bytes: int, device: torch.device) -> int:
    """How many blocks fit: `num_kv_blocks` if set, else the memory budget
    (`gpu_memory_utilization` of the card on CUDA, `cpu_kv_cache_gib` elsewhere)."""
    if cache.num_kv_blocks is not None:
        return cache.num_kv_blocks
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # Keep (1 - utilization) of the card for activations and other processes.
        budget = free - (1.0 - cache.gpu_memory_utilization) * total
    else:
        budget = cache.cpu_kv_cache_gib * _GIB
    num_blocks = int(budget // block_bytes)
    if num_blocks < 1:
        raise RuntimeError(
            f"no memory left for the KV cache (budget {budget / _GIB:.2f} GiB); lower the model size, "
            f"raise gpu_memory_utilization, or set num_kv_blocks")
    return num_blocks


def allocate_kv_cache(arch: ArchConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device, pin_memory: bool = False) -> torch.Tensor:
    # Left uninitialised: attention reads only slots that write_kv has filled.
    shape = (arch.num_layers, 2, num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
    return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory)


def num_swap_blocks(swap_space_gib: float, num_gpu_blocks: int, block_bytes: int) -> int:
    """CPU swap blocks: what `swap_space_gib` holds, but never more than the GPU
    cache itself (swapping out more than it could ever hold buys nothing)."""
    return min(int(swap_space_gib * _GIB // block_bytes), num_gpu_blocks)


@dataclass(eq=False)
class SwappableKVCache:
    """A model's KV cache on its device and its CPU swap space, in the same
    block layout: swapping a block is one indexed copy over dim 2."""

    device_cache: torch.Tensor  # [layers, 2, num_gpu_blocks, block_size, kv_heads, head_dim]
    swap_cache: torch.Tensor    # [layers, 2, num_cpu_blocks, block_size, kv_heads, head_dim]

    def swap(self, pairs: list[tuple[int, int]], to_cpu: bool) -> None:
        """Copy (source block, destination block) pairs out to CPU or back in."""
        if not pairs:
            return
        source, destination = ((self.device_cache, self.swap_cache) if to_cpu
                               else (self.swap_cache, self.device_cache))
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=source.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=destination.device)
        destination[:, :, dst] = source[:, :, src].to(destination.device)


def allocate_swappable_cache(arch: ArchConfig, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                             dtype: torch.dtype, device: torch.device) -> SwappableKVCache:
    return SwappableKVCache(
        allocate_kv_cache(arch, num_gpu_blocks, block_size, dtype, device),
        allocate_kv_cache(arch, num_cpu_blocks, block_size, dtype, torch.device("cpu"),
                          pin_memory=device.type == "cuda"))
