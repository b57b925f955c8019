"""What one request may ask of an engine, checkable without the engine.

The engine refuses a request that could never run (token ids outside the
vocabulary, more tokens than max_model_len, more KV blocks than the cache can
give one request) with a ValueError naming the field. `RequestLimits` holds
the few numbers those checks need, so a frontend in another process than the
engine can refuse a bad request before anything starts, with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from helix.block_manager.block_table import blocks_for_tokens
from helix.sampling_params import SamplingParams


class InfeasibleRequestError(ValueError):
    """The request could never finish on this engine (too long for it)."""


@dataclass(frozen=True)
class RequestLimits:
    vocab_size: int
    max_model_len: int
    block_size: int
    usable_blocks: int  # KV blocks one request may hold: the cache less its watermark

    def check(self, prompt_token_ids: list[int], params: SamplingParams) -> SamplingParams:
        """Raise ValueError for a request that could never run; returns `params`
        with max_tokens filled in (what max_model_len leaves after the prompt)."""
        if not prompt_token_ids:
            raise ValueError("prompt: must contain at least one token")
        bad = [t for t in prompt_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt: token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        params.check_token_ids(self.vocab_size)
        if params.max_tokens is None:
            params = replace(params, max_tokens=max(1, self.max_model_len - len(prompt_token_ids)))
        check_fits(len(prompt_token_ids), params.max_tokens, self.max_model_len, self.block_size,
                   self.usable_blocks)
        return params


def check_fits(num_prompt_tokens: int, max_tokens: int, max_model_len: int, block_size: int,
               usable_blocks: int) -> None:
    """Refuse a request that could never finish, instead of letting it wait forever."""
    total = num_prompt_tokens + max_tokens
    if total > max_model_len:
        raise InfeasibleRequestError(f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) = {total} "
                                     f"exceeds max_model_len ({max_model_len})")
    needed = blocks_for_tokens(total, block_size)
    if needed > usable_blocks:
        raise InfeasibleRequestError(f"request needs {needed} KV blocks for {total} tokens but the cache has "
                                     f"{usable_blocks} usable blocks")
