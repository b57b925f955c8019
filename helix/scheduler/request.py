"""A request's state is counters, not phases.

`num_computed_tokens` positions of `all_token_ids` have K/V in the cache; the
scheduler's job each step is to close the gap to `num_tokens`. A fresh prompt,
a prompt being re-computed after preemption, and a decode step differ only in
the size of that gap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property

from helix.sampling_params import SamplingParams
from helix.structured_output import GrammarMatcher


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"  # the engine failed this request (e.g. out of memory in its step)


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: dict[int, float]  # token id -> logprob of the top-N alternatives


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    priority: int = 0
    cache_salt: str | None = None
    arrival_index: int = 0  # tie-break: order of arrival at the scheduler
    prefix_leader: Request | None = None  # for n > 1: the sibling whose prompt blocks this one shares
    grammar: GrammarMatcher | None = None  # with structured output: has consumed exactly output_token_ids

    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_draft_computed_tokens: int = 0  # positions with K/V in the draft model's cache (<= the target's)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of full blocks, chained
    num_preemptions: int = 0
    spec_accepted_ema: float = 0.0  # decayed counts of accepted drafts / acceptance trials
    spec_trials_ema: float = 0.0
    num_draft_tokens: int = 0       # drafts proposed for this request, in total
    num_accepted_tokens: int = 0    # of which the target accepted

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def max_tokens(self) -> int:
        assert self.params.max_tokens is not None, "resolved at admission"
        return self.params.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def sampler_reads_output(self) -> bool:
        """Whether sampling the next token reads the output so far (penalties, a
        grammar, or min_tokens still masking stop tokens): then it needs the last
        token on the host."""
        params = self.params
        return (params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty)
                or self.grammar is not None or len(self.output_token_ids) < params.min_tokens)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    @cached_property
    def stop_token_set(self) -> frozenset[int]:
        """Tokens that end the request (once min_tokens is reached): stop_token_ids, and EOS unless ignored."""
        eos = frozenset() if self.params.ignore_eos else self.eos_token_ids
        return frozenset(self.params.stop_token_ids) | eos

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens at positions [start, end), without building all_token_ids (hot path)."""
        num_prompt = len(self.prompt_token_ids)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt:end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - num_prompt]
