"""Host staging shared by the CUDA graph runners (plain numpy, runs anywhere)."""

from __future__ import annotations

import numpy as np

from helix.worker.cuda_graphs import fill_block_tables


def test_block_tables_fill_rows_and_zero_to_the_widest() -> None:
    host = np.full((4, 6), 9, dtype=np.int32)
    fill_block_tables(host, [(3, 4), (5, 6, 7), (8,)])
    assert host[:3].tolist() == [[3, 4, 0, 9, 9, 9], [5, 6, 7, 9, 9, 9], [8, 0, 0, 9, 9, 9]]
    assert host[3].tolist() == [9] * 6  # rows past the tables are left alone
