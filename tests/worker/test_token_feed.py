"""TokenFeed writes device-chosen ids into a step's input ids: every branch
(contiguous rows or gathered, evenly spaced spans or scattered, an offset
into the span) against the same writes done one by one."""

from __future__ import annotations

import pytest
import torch

from helix.worker.token_feed import TokenFeed


def fed_by_hand(input_ids: torch.Tensor, feed: TokenFeed, first_rows: list[int]) -> torch.Tensor:
    expected = input_ids.clone()
    for span, row in zip(feed.spans, feed.rows):
        expected[first_rows[span] + feed.offset] = feed.source[row]
    return expected


@pytest.mark.parametrize("spans, rows, first_rows, offset", [
    ((0, 1, 2), (0, 1, 2), [0, 1, 2], 0),          # decode graph: one token per span, in order
    ((0, 1, 2), (0, 1, 2), [0, 5, 10], 0),         # verify graph: spans padded to q = 5
    ((0, 2), (1, 0), [0, 3, 4], 0),                # rows gathered, spans scattered (eager, ragged)
    ((1,), (2,), [0, 7, 9], 0),                    # a single fed span
    ((0, 1), (0, 1), [0, 5, 10], 3),               # draft depth 2 of a verify span
    ((2, 0), (0, 1), [0, 4, 8], 1),                # spans out of order
])
def test_feed_writes_each_id_where_its_span_puts_it(spans: tuple[int, ...], rows: tuple[int, ...],
                                                     first_rows: list[int], offset: int) -> None:
    source = torch.tensor([101, 202, 303])
    input_ids = torch.arange(16, dtype=torch.int64)
    feed = TokenFeed(spans, source, rows, offset)
    expected = fed_by_hand(input_ids, feed, first_rows)
    feed.apply(input_ids, first_rows)
    assert torch.equal(input_ids, expected)
    assert sorted(int(input_ids[first_rows[s] + offset]) for s in spans) == sorted(int(source[r]) for r in rows)

