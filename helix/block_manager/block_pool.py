"""Physical KV blocks: a free queue, reference counts and prefix-cache hashes.

Invariant: every block is either free (ref count 0, in the free queue) or held
(ref count = number of holders, not in the queue). A free block may still carry
the hash of the tokens it holds, so a later request with the same prefix can
take it back; allocation reuses the least recently freed block first and only
then forgets its hash (LRU eviction).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable


class OutOfBlocksError(RuntimeError):
    pass


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks: must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_of_block: dict[int, bytes] = {}
        self._block_of_hash: dict[bytes, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    def allocate(self, count: int) -> list[int]:
        """Take `count` free blocks (ref count 1 each), least recently freed first."""
        if count > len(self._free):
            raise OutOfBlocksError(
                f"asked for {count} KV blocks but only {len(self._free)} of {self.num_blocks} are free")
        blocks = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            self._forget_hash(block_id)
            self._ref_counts[block_id] = 1
            blocks.append(block_id)
        return blocks

    def share(self, block_ids: Iterable[int]) -> None:
        """Add a holder to each block; a free cached block leaves the free queue."""
        for block_id in block_ids:
            if self._ref_counts[block_id] == 0:
                del self._free[block_id]
            self._ref_counts[block_id] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop one holder from each block; blocks nobody holds become free, in the order given."""
        for block_id in block_ids:
            if self._ref_counts[block_id] <= 0:
                raise RuntimeError(f"block {block_id} freed while not held (double free)")
            self._ref_counts[block_id] -= 1
            if self._ref_counts[block_id] == 0:
                self._free[block_id] = None

    def cache_block(self, block_id: int, block_hash: bytes) -> None:
        """Record that a held, full block stores the tokens named by `block_hash`."""
        if block_hash in self._block_of_hash or block_id in self._hash_of_block:
            return
        self._hash_of_block[block_id] = block_hash
        self._block_of_hash[block_hash] = block_id

    def lookup(self, block_hash: bytes) -> int | None:
        return self._block_of_hash.get(block_hash)

    def _forget_hash(self, block_id: int) -> None:
        block_hash = self._hash_of_block.pop(block_id, None)
        if block_hash is not None:
            del self._block_of_hash[block_hash]

    def check_invariants(self) -> None:
        """Raise if any block is both free and held, or lost, or over-counted."""
        for block_id, count in enumerate(self._ref_counts):
            if count < 0 or (count == 0) != (block_id in self._free):
                raise AssertionError(f"block {block_id}: ref count {count}, free={block_id in self._free}")
        if len(self._free) != self._ref_counts.count(0):
            raise AssertionError("free queue holds a block twice")
        for block_id, block_hash in self._hash_of_block.items():
            if self._block_of_hash.get(block_hash) != block_id:
                raise AssertionError(f"block {block_id}: hash maps elsewhere")
