"""Model-free proposals by prompt lookup: continue an earlier occurrence of the
last n tokens (n from `max_ngram` down to `min_ngram`)."""

from __future__ import annotations

from typing import Sequence


def propose_ngram(token_ids: Sequence[int], num_tokens: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to `num_tokens` tokens that followed the latest earlier match of the suffix."""
    length = len(token_ids)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = list(token_ids[length - n:])
        # Latest earlier occurrence first: recent context predicts best.
        for start in range(length - n - 1, -1, -1):
            if list(token_ids[start:start + n]) == suffix:
                return list(token_ids[start + n:start + n + num_tokens])
    return []
