"""Per-request block tables over one BlockPool.

A request's table lists the physical blocks holding its tokens in logical
order: token at position p lives in table[p // block_size], offset
p % block_size. The table always covers the request's allocated slots; it can
grow (new tokens) and shrink (rejected speculative tokens).
"""

from __future__ import annotations

from helix.block_manager.block_pool import BlockPool


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockTables:
    def __init__(self, pool: BlockPool, block_size: int):
        self.pool = pool
        self.block_size = block_size
        self._tables: dict[str, list[int]] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._tables

    def get(self, request_id: str) -> list[int]:
        return self._tables.get(request_id, [])

    def num_new_blocks(self, request_id: str, num_tokens: int) -> int:
        """Blocks to allocate so the request's table covers `num_tokens` slots."""
        return max(0, blocks_for_tokens(num_tokens, self.block_size) - len(self.get(request_id)))

    def can_grow(self, request_id: str, num_tokens: int, reserve: int = 0) -> bool:
        return self.num_new_blocks(request_id, num_tokens) + reserve <= self.pool.num_free_blocks

    def grow(self, request_id: str, num_tokens: int) -> list[int]:
        """Extend the table to cover `num_tokens` slots; all or nothing. Returns the new blocks."""
        new_blocks = self.pool.allocate(self.num_new_blocks(request_id, num_tokens))
        self._tables.setdefault(request_id, []).extend(new_blocks)
        return new_blocks

    def adopt(self, request_id: str, shared_blocks: list[int]) -> None:
        """Start a table with blocks another holder already holds (prefix cache, n > 1)."""
        if request_id in self._tables:
            raise RuntimeError(f"request {request_id!r} already has a block table")
        self.pool.share(shared_blocks)
        self._tables[request_id] = list(shared_blocks)

    def shrink(self, request_id: str, num_tokens: int) -> None:
        """Return blocks past the first `num_tokens` slots to the pool."""
        table = self._tables.get(request_id, [])
        keep = blocks_for_tokens(num_tokens, self.block_size)
        if len(table) > keep:
            self.pool.free(reversed(table[keep:]))
            del table[keep:]

    def free(self, request_id: str) -> None:
        """Release the whole table; tail blocks first, so they are reused (evicted) first."""
        table = self._tables.pop(request_id, [])
        self.pool.free(reversed(table))
