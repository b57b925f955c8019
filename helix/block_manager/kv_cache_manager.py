"""GPU blocks, CPU swap blocks and the prefix cache, for the scheduler.

The scheduler speaks tokens; this class turns them into blocks. It never
touches tensors: swaps come back as (source block, destination block) pairs
for the worker to copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.block_manager.block_pool import BlockPool
from helix.block_manager.block_table import BlockTables, blocks_for_tokens
from helix.block_manager.prefix_hash import extend_block_hashes
from helix.scheduler.request import Request


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class KVCacheManager:
    def __init__(self, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 enable_prefix_caching: bool, watermark: float = 0.01):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.gpu_pool = BlockPool(num_gpu_blocks)
        self.gpu_tables = BlockTables(self.gpu_pool, block_size)
        self.cpu_pool = BlockPool(num_cpu_blocks) if num_cpu_blocks > 0 else None
        self.cpu_tables = BlockTables(self.cpu_pool, block_size) if self.cpu_pool else None
        # Admission leaves this many blocks free so running requests can grow.
        self.watermark_blocks = int(watermark * num_gpu_blocks)
        self.prefix_stats = PrefixCacheStats()
        self._num_committed_blocks: dict[str, int] = {}

    # -- sizes ---------------------------------------------------------------
    @property
    def num_gpu_blocks(self) -> int:
        return self.gpu_pool.num_blocks

    @property
    def num_free_gpu_blocks(self) -> int:
        return self.gpu_pool.num_free_blocks

    @property
    def num_cpu_blocks(self) -> int:
        return self.cpu_pool.num_blocks if self.cpu_pool else 0

    @property
    def num_used_cpu_blocks(self) -> int:
        return self.cpu_pool.num_blocks - self.cpu_pool.num_free_blocks if self.cpu_pool else 0

    def block_table(self, request_id: str) -> list[int]:
        return self.gpu_tables.get(request_id)

    # -- admission and growth -------------------------------------------------
    def cached_prefix(self, request: Request) -> list[int]:
        """Cached GPU blocks holding the request's leading full prompt blocks.

        At least one prompt token is always left to compute (its logits start
        the output), and requests that want prompt logprobs compute everything.
        """
        if not self.enable_prefix_caching or request.params.prompt_logprobs is not None:
            return []
        self._update_hashes(request, request.num_tokens)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits = []
        for block_hash in request.block_hashes[:max_blocks]:
            block_id = self.gpu_pool.lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def admit(self, request: Request, cached_blocks: list[int], num_new_tokens: int) -> bool:
        """Give a waiting request its cached prefix plus slots for its first chunk.

        `num_new_tokens` counts from the end of the cached prefix. All or nothing.
        """
        num_cached_tokens = len(cached_blocks) * self.block_size
        # Cached blocks that sit in the free queue stop counting as free once taken.
        reclaimed = sum(1 for b in cached_blocks if self.gpu_pool.ref_count(b) == 0)
        needed = blocks_for_tokens(num_cached_tokens + num_new_tokens, self.block_size) - len(cached_blocks)
        if needed + reclaimed + self.watermark_blocks > self.num_free_gpu_blocks:
            return False
        self.gpu_tables.adopt(request.request_id, cached_blocks)
        self.gpu_tables.grow(request.request_id, num_cached_tokens + num_new_tokens)
        self._num_committed_blocks[request.request_id] = len(cached_blocks)
        if request.params.prompt_logprobs is None and self.enable_prefix_caching:
            self.prefix_stats.queried_tokens += request.num_tokens
            self.prefix_stats.hit_tokens += num_cached_tokens
        return True

    def grow(self, request: Request, num_tokens: int) -> bool:
        """Make the request's table cover `num_tokens` slots, if blocks allow."""
        if not self.gpu_tables.can_grow(request.request_id, num_tokens):
            return False
        self.gpu_tables.grow(request.request_id, num_tokens)
        return True

    def truncate(self, request: Request, num_tokens: int) -> None:
        """Drop slots past `num_tokens` (rejected speculative tokens)."""
        self.gpu_tables.shrink(request.request_id, num_tokens)
        committed = self._num_committed_blocks.get(request.request_id, 0)
        self._num_committed_blocks[request.request_id] = min(committed, num_tokens // self.block_size)

    def commit_computed_blocks(self, request: Request, num_tokens: int) -> None:
        """Publish full blocks within the first `num_tokens` (computed) tokens to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        num_full = num_tokens // self.block_size
        committed = self._num_committed_blocks.get(request.request_id, 0)
        if num_full <= committed:
            return
        self._update_hashes(request, num_tokens)
        table = self.gpu_tables.get(request.request_id)
        for index in range(committed, num_full):
            self.gpu_pool.cache_block(table[index], request.block_hashes[index])
        self._num_committed_blocks[request.request_id] = num_full

    def _update_hashes(self, request: Request, num_tokens: int) -> None:
        extend_block_hashes(request.block_hashes, request.all_token_ids, num_tokens,
                            self.block_size, request.cache_salt)

    # -- release -------------------------------------------------------------
    def free(self, request: Request) -> None:
        """Return every GPU and CPU block the request holds."""
        self.gpu_tables.free(request.request_id)
        if self.cpu_tables is not None:
            self.cpu_tables.free(request.request_id)
        self._num_committed_blocks.pop(request.request_id, None)

    # -- swap ----------------------------------------------------------------
    def can_swap_out(self, request: Request) -> bool:
        num_blocks = len(self.gpu_tables.get(request.request_id))
        return self.cpu_pool is not None and num_blocks <= self.cpu_pool.num_free_blocks

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks to CPU; returns (gpu block, cpu block) copies."""
        assert self.cpu_tables is not None
        gpu_blocks = self.gpu_tables.get(request.request_id)
        cpu_blocks = self.cpu_tables.grow(request.request_id, len(gpu_blocks) * self.block_size)
        mapping = list(zip(gpu_blocks, cpu_blocks))
        self.gpu_tables.free(request.request_id)
        # The blocks come back as new GPU blocks while the freed ones may be evicted meanwhile:
        # publish every full block again after the swap-in (hashes still cached are skipped).
        self._num_committed_blocks[request.request_id] = 0
        return mapping

    def can_swap_in(self, request: Request, num_tokens: int = 0) -> bool:
        """Whether the request's blocks fit back on the GPU, grown to cover `num_tokens` slots."""
        assert self.cpu_tables is not None
        needed = max(len(self.cpu_tables.get(request.request_id)), blocks_for_tokens(num_tokens, self.block_size))
        return needed + self.watermark_blocks <= self.num_free_gpu_blocks

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks back; returns (cpu block, gpu block) copies."""
        assert self.cpu_tables is not None
        cpu_blocks = self.cpu_tables.get(request.request_id)
        gpu_blocks = self.gpu_tables.grow(request.request_id, len(cpu_blocks) * self.block_size)
        mapping = list(zip(cpu_blocks, gpu_blocks))
        self.cpu_tables.free(request.request_id)
        return mapping

    def check_invariants(self) -> None:
        self.gpu_pool.check_invariants()
        if self.cpu_pool is not None:
            self.cpu_pool.check_invariants()
