"""Incremental detokenization with stop strings.

Text is released as tokens arrive, except for a tail as long as the longest
stop string minus one character: that tail might be the start of a stop string
and is held back until it is clearly not (or the request ends).
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

from helix.sampling_params import SamplingParams

_PROMPT_CONTEXT_TOKENS = 8  # primes the stream so the first output token gets its leading space right


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams):
        self._backend = tokenizer.backend_tokenizer if tokenizer is not None else None
        self._stream = DecodeStream(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:], params.skip_special_tokens)
        self._stops = params.stop
        self._include_stop = params.include_stop_str_in_output
        self._hold_back = max((len(s) for s in self._stops), default=1) - 1
        self.text = ""
        self._released = 0
        self._searched = 0  # stop strings cannot start before this offset

    def update(self, token_ids: list[int], finished: bool) -> tuple[str, bool]:
        """Decode new tokens; return (newly released text, whether a stop string matched)."""
        if self._backend is not None:
            for token_id in token_ids:
                chunk = self._stream.step(self._backend, token_id)
                if chunk:
                    self.text += chunk
        stopped = self._find_stop()
        end = len(self.text) if (finished or stopped) else max(self._released, len(self.text) - self._hold_back)
        delta = self.text[self._released:end]
        self._released = end
        return delta, stopped

    def _find_stop(self) -> bool:
        if not self._stops:
            return False
        start = max(0, self._searched - self._hold_back)
        matches = [(index, stop) for stop in self._stops if (index := self.text.find(stop, start)) >= 0]
        self._searched = len(self.text)
        if not matches:
            return False
        index, stop = min(matches)
        self.text = self.text[:index + len(stop)] if self._include_stop else self.text[:index]
        return True
