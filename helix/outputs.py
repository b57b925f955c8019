"""What callers of LLM.generate and AsyncEngine.generate receive."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from helix.scheduler.request import TokenLogprobs


@dataclass
class CompletionOutput:
    """One of the request's `n` completions. `text` and `token_ids` are
    cumulative; `delta_text` and `delta_token_ids` hold what the latest step added."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
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


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    num_cached_tokens: int = 0
    error: str | None = None  # why the engine failed the request (finish_reason "error")

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)

    def snapshot(self) -> "RequestOutput":
        """A copy that later steps will not change (outputs are built up in place)."""
        return replace(self, outputs=[o.snapshot() for o in self.outputs],
                       prompt_logprobs=None if self.prompt_logprobs is None else list(self.prompt_logprobs))
