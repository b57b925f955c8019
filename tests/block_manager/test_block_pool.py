from __future__ import annotations

import random

import pytest

from helix.block_manager.block_pool import BlockPool, OutOfBlocksError
from helix.block_manager.block_table import BlockTables


def test_allocate_gives_distinct_held_blocks() -> None:
    pool = BlockPool(10)
    blocks = pool.allocate(4) + pool.allocate(6)
    assert sorted(blocks) == list(range(10))
    assert pool.num_free_blocks == 0
    assert all(pool.ref_count(b) == 1 for b in blocks)
    pool.check_invariants()


def test_exhaustion_is_a_clear_error_and_allocates_nothing() -> None:
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(OutOfBlocksError, match="asked for 2 KV blocks but only 1 of 4"):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    pool.check_invariants()


def test_shared_blocks_are_freed_by_the_last_holder() -> None:
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    pool.share(blocks)
    assert [pool.ref_count(b) for b in blocks] == [2, 2]
    pool.free(blocks)
    assert pool.num_free_blocks == 2
    pool.free(blocks)
    assert pool.num_free_blocks == 4
    pool.check_invariants()


def test_double_free_is_refused() -> None:
    pool = BlockPool(2)
    blocks = pool.allocate(1)
    pool.free(blocks)
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(blocks)


def test_cached_free_block_is_reclaimed_by_lookup_until_evicted() -> None:
    pool = BlockPool(2)
    [block] = pool.allocate(1)
    pool.cache_block(block, b"h")
    pool.free([block])
    assert pool.lookup(b"h") == block and pool.num_free_blocks == 2
    pool.share([block])  # a prefix hit takes it back out of the free queue
    assert pool.num_free_blocks == 1 and pool.ref_count(block) == 1
    pool.free([block])
    pool.allocate(2)  # reusing the block evicts its hash
    assert pool.lookup(b"h") is None
    pool.check_invariants()


def test_random_workload_keeps_invariants_and_returns_every_block() -> None:
    rng = random.Random(0)
    pool = BlockPool(64)
    tables = BlockTables(pool, block_size=4)
    lengths: dict[str, int] = {}
    for step in range(2000):
        action = rng.random()
        if action < 0.5:
            seq_id = f"r{rng.randrange(20)}"
            target = lengths.get(seq_id, 0) + rng.randrange(1, 12)
            if tables.can_grow(seq_id, target):
                tables.grow(seq_id, target)
                lengths[seq_id] = target
        elif action < 0.7 and lengths:
            seq_id = rng.choice(sorted(lengths))
            lengths[seq_id] = rng.randrange(lengths[seq_id] + 1)
            tables.shrink(seq_id, lengths[seq_id])
        elif lengths:
            seq_id = rng.choice(sorted(lengths))
            tables.free(seq_id)
            del lengths[seq_id]
        pool.check_invariants()
        held = [b for seq_id in lengths for b in tables.get(seq_id)]
        assert len(held) == len(set(held)), "a block is held twice"
        assert len(held) + pool.num_free_blocks == pool.num_blocks
    for seq_id in list(lengths):
        tables.free(seq_id)
    assert pool.num_free_blocks == pool.num_blocks


def test_grow_is_all_or_nothing() -> None:
    pool = BlockPool(3)
    tables = BlockTables(pool, block_size=4)
    tables.grow("a", 8)
    assert not tables.can_grow("b", 9)
    with pytest.raises(OutOfBlocksError):
        tables.grow("b", 9)
    assert tables.get("b") == [] and pool.num_free_blocks == 1


def test_shrink_returns_only_blocks_past_the_kept_tokens() -> None:
    pool = BlockPool(8)
    tables = BlockTables(pool, block_size=4)
    tables.grow("a", 13)  # 4 blocks
    tables.shrink("a", 5)  # positions 0..4 need 2 blocks
    assert len(tables.get("a")) == 2 and pool.num_free_blocks == 6
