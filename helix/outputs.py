"""What callers of LLM.generate and AsyncEngine.generate receive."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from helix.sampling_params import RequestOutputKind
from helix.scheduler.request import TokenLogprobs

_T = TypeVar("_T")


@dataclass
class CompletionOutput:
    """One of the request's `n` completions.

    In a CUMULATIVE output (the default) `text`, `token_ids` and `logprobs` hold
    everything generated so far; in a DELTA output (`SamplingParams.output_kind`)
    they hold only what is new since the previous output. In both, `delta_text`
    and `delta_token_ids` hold what is new since the previous output and
    `num_generated_tokens` counts every token generated so far.
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    num_generated_tokens: int = 0
    num_draft_tokens: int = 0     # speculation: drafts proposed for this completion ...
    num_accepted_tokens: int = 0  # ... and accepted by the target

    @property
    def acceptance_rate(self) -> float | None:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def snapshot(self) -> "CompletionOutput":
        return replace(self, token_ids=list(self.token_ids), delta_token_ids=list(self.delta_token_ids),
                       logprobs=None if self.logprobs is None else list(self.logprobs))

    def next_delta(self) -> "CompletionOutput":
        """The DELTA completion after this one: its counts and finish reason, nothing new yet."""
        return CompletionOutput(self.index, finish_reason=self.finish_reason,
                                num_generated_tokens=self.num_generated_tokens,
                                num_draft_tokens=self.num_draft_tokens, num_accepted_tokens=self.num_accepted_tokens)


@dataclass
class RequestOutput:
    """One output of a request; `kind` says how its completions are read. DELTA
    outputs of a request share one `prompt_logprobs` list (read it, don't change it)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    num_cached_tokens: int = 0
    error: str | None = None  # why the engine failed the request (finish_reason "error")
    kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)

    def snapshot(self) -> "RequestOutput":
        """A copy that later steps will not change (outputs are built up in place)."""
        return replace(self, outputs=[o.snapshot() for o in self.outputs],
                       prompt_logprobs=None if self.prompt_logprobs is None else list(self.prompt_logprobs))

    def next_delta(self) -> "RequestOutput":
        """The DELTA output after this one: its counts, finish reasons and prompt logprobs, nothing new yet."""
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids,
                             [o.next_delta() for o in self.outputs], self.prompt_logprobs, self.num_cached_tokens,
                             self.error, RequestOutputKind.DELTA)


def merge_outputs(older: RequestOutput, newer: RequestOutput) -> RequestOutput:
    """One output in place of two consecutive outputs of a request: `newer`, made to
    carry what `older` added too. What is new concatenates (in DELTA outputs: text,
    token ids, logprobs; in both kinds: the deltas); every other field is newer's.
    Both are given up: their lists are reused."""
    for old, new in zip(older.outputs, newer.outputs):
        new.delta_text = old.delta_text + new.delta_text
        new.delta_token_ids = _concat(old.delta_token_ids, new.delta_token_ids)
        if newer.kind is RequestOutputKind.DELTA:
            new.text = old.text + new.text
            new.token_ids = _concat(old.token_ids, new.token_ids)
            new.logprobs = _concat_optional(old.logprobs, new.logprobs)
    return newer


def _concat(head: list[_T], tail: list[_T]) -> list[_T]:
    head.extend(tail)
    return head


def _concat_optional(head: list[_T] | None, tail: list[_T] | None) -> list[_T] | None:
    if head is None or tail is None:
        return tail if head is None else head
    return _concat(head, tail)
