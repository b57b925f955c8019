"""Incremental detokenization with stop strings.

Text is released as tokens arrive, except for a tail as long as the longest
stop string minus one character: that tail might be the start of a stop string
and is held back until it is clearly not (or the request ends). Stop strings
are looked for after every token, so when several tokens arrive at once
(speculative decoding) the caller learns how many of them came before the stop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from tokenizers.decoders import DecodeStream

from helix.sampling_params import SamplingParams

_PROMPT_CONTEXT_TOKENS = 8  # primes the stream so the first output token gets its leading space right


class Delta(NamedTuple):
    text: str        # newly released text
    stopped: bool    # a stop string matched (the text is trimmed at it)
    num_tokens: int  # tokens of this update up to and including the one that completed the stop


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams):
        self._backend = tokenizer.backend_tokenizer if tokenizer is not None else None
        self._skip_special = params.skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=params.skip_special_tokens)
        if self._backend is not None:
            # Stepped, not passed as DecodeStream(ids): a prompt ending inside a character would
            # otherwise come back whole in the first chunk.
            for token_id in prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:]:
                self._stream.step(self._backend, token_id)
        self._stops = params.stop
        self._include_stop = params.include_stop_str_in_output
        self._hold_back = max((len(s) for s in self._stops), default=1) - 1
        self._undecoded: list[int] = []  # tokens of a character not yet complete
        self.text = ""
        self._released = 0
        self._searched = 0  # stop strings cannot start before this offset

    def update(self, token_ids: list[int], finished: bool) -> Delta:
        """Decode new tokens, stopping at the first token that completes a stop string."""
        stopped = False
        consumed = 0
        for token_id in token_ids:
            consumed += 1
            self._decode(token_id)
            if self._find_stop():
                stopped = True
                break
        if finished and not stopped:
            self._flush()
        end = len(self.text) if (finished or stopped) else max(self._released, len(self.text) - self._hold_back)
        delta = self.text[self._released:end]
        self._released = end
        return Delta(delta, stopped, consumed)

    def _decode(self, token_id: int) -> None:
        if self._backend is None:
            return
        chunk = self._stream.step(self._backend, token_id)
        if chunk:
            self.text += chunk
            self._undecoded.clear()
        else:
            self._undecoded.append(token_id)

    def _flush(self) -> None:
        """At the end, bytes of an unfinished character become U+FFFD rather than vanish."""
        if self._backend is not None and self._undecoded:
            self.text += self._backend.decode(self._undecoded, skip_special_tokens=self._skip_special)
            self._undecoded.clear()

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
