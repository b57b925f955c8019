"""Content hashes of full KV blocks, chained so a hash names a whole prefix."""

from __future__ import annotations

import hashlib
from array import array
from typing import Sequence


def hash_block(parent: bytes | None, token_ids: Sequence[int], cache_salt: str | None) -> bytes:
    """sha256 over the previous block's hash, this block's tokens and the salt.

    Only the first block mixes in the salt: the chain carries it onwards.
    """
    digest = hashlib.sha256()
    if parent is None:
        digest.update(b"salt:" + (cache_salt or "").encode())
    else:
        digest.update(parent)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


def extend_block_hashes(hashes: list[bytes], token_ids: Sequence[int], num_full_tokens: int,
                        block_size: int, cache_salt: str | None) -> None:
    """Append hashes for every full block within the first `num_full_tokens` tokens."""
    for index in range(len(hashes), num_full_tokens // block_size):
        parent = hashes[-1] if hashes else None
        hashes.append(hash_block(parent, token_ids[index * block_size:(index + 1) * block_size], cache_salt))
