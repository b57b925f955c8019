"""Plain data between the scheduler and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from helix.scheduler.request import FinishReason, Request, TokenLogprobs
from helix.scheduler.speculation import StepPlan


@dataclass(frozen=True)
class ScheduledRequest:
    """Run `num_new_tokens` tokens of `request`, starting at position `start`.

    With speculation, `num_new_tokens` = 1 + `num_spec_tokens`: the last known
    token plus up to that many draft tokens to verify (slots are reserved for
    all of them). `samples`: the step computes the request's last token, so a
    new one is sampled. Scheduled ahead of the previous step's results, the
    token at `start` may still be in flight (`start >= request.num_tokens`);
    the worker takes it from the previous step's sampled ids on the device.
    `num_steps` > 1 (multi-step): without drafts the worker decodes that many
    tokens, one forward each, each fed the token the forward before chose;
    slots are reserved for positions start .. start + num_steps - 1. With
    drafts it chains that many speculative rounds of K = `num_spec_tokens`,
    each starting where the round before stopped (known only on the device);
    slots are reserved for the most they can emit, num_steps * (1 + K). The
    worker reads the request but never changes it.
    """

    request: Request
    start: int
    num_new_tokens: int
    block_table: tuple[int, ...]
    num_spec_tokens: int = 0
    samples: bool = True
    num_steps: int = 1


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu block, cpu block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)   # (cpu block, gpu block)
    finished_ids: list[str] = field(default_factory=list)          # ended since the last step
    # Scheduled ahead of results, a running request could not grow and was left
    # out: the next step must wait for this one's results, so it may preempt.
    needs_preemption: bool = False
    spec_plan: StepPlan | None = None  # the step's K for its decoding requests (None: no speculation)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def only_decodes(self) -> bool:
        """Every request of the step decodes: it samples, and its span is its one
        known token plus its drafts (no prompt chunk). False for an empty step."""
        return bool(self.scheduled) and all(item.samples and item.num_new_tokens == 1 + item.num_spec_tokens
                                            for item in self.scheduled)


@dataclass(frozen=True)
class ModelOutput:
    """What the worker returns, keyed by request id.

    `sampled` holds the emitted tokens of requests that sampled: one, or with
    speculation the accepted drafts plus one, per verify. `verifies` holds
    each verify's (drafts proposed, drafts accepted), in order: several when
    speculative rounds were chained. `draft_computed` is the draft cache's
    new coverage.
    """

    sampled: dict[str, list[int]]
    logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprobs | None]] = field(default_factory=dict)
    verifies: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    draft_computed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestUpdate:
    """New tokens of one request after a step, for the output processor."""

    request: Request
    new_token_ids: list[int]
    finish_reason: FinishReason | None
