"""Structured output: grammars (a JSON schema, a regex, a choice of strings) that
constrain every sampled token, compiled by llguidance.

A request whose SamplingParams carry `structured_outputs` owns a
`GrammarMatcher`. Invariant: the matcher has consumed exactly the request's
output tokens (the scheduler feeds it each token it appends), so it can say
which next tokens keep the output a prefix of a valid document, after those
tokens plus a hypothetical continuation (the drafts under verification). The
sampler sets every other logit to -inf, for draft and target alike, so
speculative decoding's rejection sampling stays exact for the constrained
distribution. When the output is complete (nothing may follow it but EOS)
the request finishes with reason "stop".

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
    """What the output must be; exactly one of:

    - json: a JSON schema (a dict or its JSON text) the output is valid against;
    - json_object: any JSON object;
    - regex: a regular expression (Rust `regex` syntax) the whole output matches;
    - choice: one of these strings, exactly.
    """

    json: str | Mapping[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: Sequence[str] | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError("structured_outputs: give exactly one of json, json_object, regex and choice, "
                             f"got {', '.join(given) or 'none'}")
        if self.json is not None:
            object.__setattr__(self, "json", _schema_text(self.json))
        if self.choice is not None:
            choice = tuple(self.choice) if not isinstance(self.choice, str) else ()
            if not choice or not all(isinstance(c, str) and c for c in choice):
                raise ValueError("structured_outputs.choice: must be a list of non-empty strings")
            object.__setattr__(self, "choice", choice)

    def grammar(self) -> str:
        """The llguidance grammar (JSON text)."""
        if self.regex is not None:
            return llguidance.LLMatcher.grammar_from_regex(self.regex)
        if self.choice is not None:  # Lark string literals take JSON's escapes
            return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.choice))
        schema = _ANY_OBJECT if self.json is None else str(self.json)
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)


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
            raise ValueError(f"{field}: cannot be compiled: {matcher.get_error()}")
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
