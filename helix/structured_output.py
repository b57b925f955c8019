"""Structured output: JSON grammars that constrain every sampled token (llguidance).

A request whose SamplingParams carry `structured_outputs` owns a
`GrammarMatcher`. Invariant: the matcher has consumed exactly the request's
output tokens (the scheduler feeds it each token it appends), so it can say
which next tokens keep the output a prefix of a valid document, after those
tokens plus a hypothetical continuation (the drafts under verification). The
sampler sets every other logit to -inf, for draft and target alike, so
speculative decoding's rejection sampling stays exact for the constrained
distribution. When the document is complete the request finishes with
reason "stop".

JSON is compiled without optional whitespace: a model that would rather
write newlines than close a brace cannot loop on them, and the output is the
compact form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import llguidance
import llguidance.hf
import numpy as np

_JSON_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False}
_ANY_OBJECT = '{"type": "object"}'


@dataclass(frozen=True)
class StructuredOutputs:
    """What the output must be: valid against the JSON schema `json` (a dict or
    its JSON text), or, with `json_object`, any JSON object. Exactly one."""

    json: str | Mapping[str, Any] | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        if (self.json is None) == (not self.json_object):
            raise ValueError("structured_outputs: give exactly one of json (a schema) and json_object")
        if self.json is not None:
            object.__setattr__(self, "json", _schema_text(self.json))

    @property
    def schema(self) -> str:
        """The JSON schema, as JSON text."""
        return _ANY_OBJECT if self.json is None else str(self.json)

    def grammar(self) -> str:
        return llguidance.LLMatcher.grammar_from_json_schema(self.schema, defaults=_JSON_OPTIONS)


def _schema_text(schema: str | Mapping[str, Any]) -> str:
    if isinstance(schema, str):
        try:
            parsed = json.loads(schema)
        except json.JSONDecodeError as error:
            raise ValueError(f"structured_outputs.json: not valid JSON: {error}") from None
    else:
        parsed = schema
    if not isinstance(parsed, Mapping):
        raise ValueError("structured_outputs.json: a JSON schema must be an object")
    try:
        return json.dumps(parsed)  # key order kept: properties are generated in the schema's order
    except (TypeError, ValueError) as error:
        raise ValueError(f"structured_outputs.json: {error}") from None


class GrammarCompiler:
    """Turns StructuredOutputs into matchers for one tokenizer (a transformers fast tokenizer)."""

    def __init__(self, tokenizer: Any):
        self._hf_tokenizer = tokenizer

    @cached_property
    def _tokenizer(self) -> llguidance.LLTokenizer | None:
        return None if self._hf_tokenizer is None else llguidance.hf.from_tokenizer(self._hf_tokenizer)

    def matcher(self, spec: StructuredOutputs, field: str = "structured_outputs") -> GrammarMatcher:
        """A fresh matcher; raises ValueError naming `field` where the schema cannot be compiled."""
        if self._tokenizer is None:
            raise ValueError(f"{field}: this model has no tokenizer, so structured output is not available")
        matcher = llguidance.LLMatcher(self._tokenizer, spec.grammar(), log_level=0)
        if matcher.is_error():
            raise ValueError(f"{field}: the schema cannot be used: {matcher.get_error()}")
        return GrammarMatcher(matcher, self._tokenizer.vocab_size)


class GrammarMatcher:
    """One request's grammar state; `num_consumed` tokens of its output consumed."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self._matcher = matcher
        self.vocab_size = vocab_size  # the tokenizer's; a model's logits may be wider
        self.num_consumed = 0
        self._bitmask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    @property
    def finished(self) -> bool:
        """The document is complete (or the matcher failed): no token but EOS may follow."""
        return self._matcher.is_stopped()

    def consume(self, token_id: int) -> None:
        """Advance past one output token. A token the grammar forbids (one sampled
        without the mask) leaves the matcher failed, which `finished` reports."""
        self._matcher.consume_token(token_id)
        self.num_consumed += 1

    def allowed_after(self, continuation: Sequence[int]) -> np.ndarray:
        """[vocab_size] bool: the tokens allowed after the consumed output and then
        `continuation`; the matcher's state is left as it was."""
        accepted = self._matcher.try_consume_tokens(list(continuation)) if continuation else 0
        if accepted == len(continuation):
            self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
            bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")[:self.vocab_size]
        else:  # a continuation the grammar forbids: nothing may follow it
            bits = np.zeros(self.vocab_size, dtype=np.uint8)
        if accepted:
            self._matcher.rollback(accepted)
        return bits.astype(bool)
