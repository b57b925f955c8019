"""Plain data between the scheduler and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from helix.scheduler.request import FinishReason, Request, TokenLogprobs


@dataclass(frozen=True)
class ScheduledRequest:
    """Run `num_new_tokens` tokens of `request`, starting at position `start`.

    The worker reads the request (tokens, params) but never changes it.
    """

    request: Request
    start: int
    num_new_tokens: int
    block_table: tuple[int, ...]

    @property
    def samples(self) -> bool:
        """True when this step computes the last known token, so a new one is sampled."""
        return self.start + self.num_new_tokens == self.request.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu block, cpu block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)   # (cpu block, gpu block)
    finished_ids: list[str] = field(default_factory=list)          # ended since the last step

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


@dataclass(frozen=True)
class ModelOutput:
    """What the worker returns: sampled tokens per request id (requests that sampled)."""

    sampled: dict[str, list[int]]
    logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprobs | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestUpdate:
    """New tokens of one request after a step, for the output processor."""

    request: Request
    new_token_ids: list[int]
    finish_reason: FinishReason | None
