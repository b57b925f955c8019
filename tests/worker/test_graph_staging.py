"""Host staging shared by the CUDA graph runners (plain numpy, runs anywhere)."""

from __future__ import annotations

import numpy as np

from helix.worker.cuda_graphs import fill_block_tables


def test_block_tables_fill_rows_and_zero_to_the_widest() -> None:
    host = np.full((4, 6), 9, dtype=np.int32)
    fill_block_tables(host, [(3, 4), (5, 6, 7), (8,)])
    assert host[:3].tolist() == [[3, 4, 0, 9, 9, 9], [5, 6, 7, 9, 9, 9], [8, 0, 0, 9, 9, 9]]
    assert host[3].tolist() == [9] * 6  # rows past the tables are left alone


def test_no_collection_runs_while_graphs_are_captured() -> None:
    """A dropped engine collected mid-capture would call into CUDA and invalidate
    the capture: pending garbage goes first, and none is collected during it."""
    import gc
    import weakref

    from helix.worker.cuda_graphs import collection_paused

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    pending = Cycle()
    before = weakref.ref(pending)
    del pending
    assert gc.isenabled()
    with collection_paused():
        assert before() is None  # collected on entry
        assert not gc.isenabled()
        during = Cycle()
        dropped = weakref.ref(during)
        del during
        kept = [[] for _ in range(10_000)]  # far past the allocations that trigger a collection
        assert dropped() is not None and kept
    assert gc.isenabled()
    gc.collect()
    assert dropped() is None
