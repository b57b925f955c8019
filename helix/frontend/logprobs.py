"""Engine log-probabilities in OpenAI's two formats: the legacy completions
format (parallel lists) and the chat format (one object per token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helix.frontend.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob
from helix.scheduler.request import TokenLogprobs


class TokenText:
    """The text of single tokens, cached (the vocabulary is finite)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id]) if self._tokenizer is not None else f"<{token_id}>"
            self._cache[token_id] = text
        return text


def completion_logprobs(text_of: TokenText, token_ids: Sequence[int], entries: Sequence[TokenLogprobs | None],
                        text_offset: int = 0) -> tuple[CompletionLogprobs, int]:
    """Legacy logprobs for `token_ids` (an entry of None has no logprob, e.g. the
    first prompt token). Returns them and the text offset after the last token."""
    result = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for token_id, entry in zip(token_ids, entries):
        token = text_of(token_id)
        result.tokens.append(token)
        result.text_offset.append(text_offset)
        text_offset += len(token)
        if entry is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
        else:
            result.token_logprobs.append(entry.logprob)
            result.top_logprobs.append(_by_text(text_of, entry.top))
    return result, text_offset


def _by_text(text_of: TokenText, top: dict[int, float]) -> dict[str, float]:
    """Distinct tokens can share a text (e.g. U+FFFD for pieces of one character);
    the legacy format is keyed by text, so the most likely of them is kept."""
    result: dict[str, float] = {}
    for token_id, logprob in top.items():
        text = text_of(token_id)
        if logprob > result.get(text, float("-inf")):
            result[text] = logprob
    return result


def chat_logprobs(text_of: TokenText, entries: Sequence[TokenLogprobs]) -> ChatLogprobs:
    content = []
    for entry in entries:
        token = text_of(entry.token_id)
        top = [TopLogprob(text_of(t), lp, list(text_of(t).encode("utf-8"))) for t, lp in entry.top.items()]
        content.append(TokenLogprob(token, entry.logprob, list(token.encode("utf-8")), top))
    return ChatLogprobs(content)
