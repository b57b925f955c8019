"""SamplingParams: how to pick tokens and when to stop, validated once."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from helix.structured_output import StructuredOutputs

MAX_LOGPROBS = 20
MAX_TOP_K = 1 << 31
_GREEDY_BELOW = 1e-5


class RequestOutputKind(enum.Enum):
    """What the outputs of a streamed request (AsyncEngine.generate) hold; see CompletionOutput."""

    CUMULATIVE = "cumulative"  # everything generated so far
    DELTA = "delta"            # only what is new since the previous output


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (names and meanings follow vLLM/OpenAI).

    temperature 0 is greedy. top_k <= 0 and top_p = 1 disable those filters.
    repetition_penalty applies to prompt and output tokens, presence and
    frequency penalties to output tokens only. `logprobs` asks for the top-N
    log-probabilities of each generated token, `prompt_logprobs` for each
    prompt token (needed by `echo`). `output_kind` picks what AsyncEngine's
    outputs hold; LLM.generate always returns whole (cumulative) outputs.
    `structured_outputs` constrains the output to a JSON schema (or any JSON
    object); the request stops when the document is complete.
    """

    n: int = 1
    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    structured_outputs: StructuredOutputs | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", {int(k): float(v) for k, v in self.logit_bias.items()})
        self._validate()

    @property
    def greedy(self) -> bool:
        # Below this, dividing logits by the temperature overflows; it is greedy in effect.
        return self.temperature < _GREEDY_BELOW

    def _validate(self) -> None:
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens",
               f"must be >= 1, got {self.max_tokens}")
        _check(self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               f"({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            _check(math.isfinite(getattr(self, name)), name, "must be a finite number")
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(-1 <= self.top_k < MAX_TOP_K, "top_k", f"must be -1, 0 (off) or a positive count, got {self.top_k}")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty",
               f"must be in [-2, 2], got {self.presence_penalty}")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty",
               f"must be in [-2, 2], got {self.frequency_penalty}")
        _check(self.repetition_penalty > 0.0, "repetition_penalty",
               f"must be > 0, got {self.repetition_penalty}")
        _check(all(math.isfinite(v) for v in self.logit_bias.values()), "logit_bias",
               "values must be finite numbers")
        _check(all(s for s in self.stop), "stop", "must not contain empty strings")
        # Seeds reach torch.Generator.manual_seed in the engine's step, which refuses values past 64 bits.
        _check(self.seed is None or -(2**63) <= self.seed < 2**63, "seed",
               f"must be a 64-bit signed integer, got {self.seed}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or 0 <= value <= MAX_LOGPROBS, name,
                   f"must be between 0 and {MAX_LOGPROBS}, got {value}")
        _check(isinstance(self.output_kind, RequestOutputKind), "output_kind",
               f"must be a RequestOutputKind, got {self.output_kind!r}")
        _check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputs),
               "structured_outputs", f"must be a StructuredOutputs, got {self.structured_outputs!r}")

    def check_token_ids(self, vocab_size: int) -> None:
        """Token ids in logit_bias and stop_token_ids must exist in the vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias), ("stop_token_ids", self.stop_token_ids)):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            _check(not bad, name, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field_name}: {message}")
