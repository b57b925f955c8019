"""How many draft tokens each request speculates this step.

With per-token acceptance rate a, proposing K drafts yields on average
E(K) = (1 - a^(K+1)) / (1 - a) tokens per step, at a cost of one target pass
plus K draft passes: 1 + K * r target-pass units, where r is the measured
draft/target pass-time ratio. Each request takes the K in [0, K_max] that
maximises E(K) / (1 + K r); K = 0 (plain decoding) wins whenever speculation
would cost more than it returns.

Load: once the batch's verify tokens exceed `token_budget`, the target pass is
compute-bound and every extra token costs time, while a K-th draft token is
worth only a^K < 1 tokens. Drafts are then removed, least valuable first,
until the batch fits. Seeded requests skip this step, so their K (and hence
their sampled tokens) depends only on their own history, never on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from helix.scheduler.outputs import StepTimings
from helix.scheduler.request import Request

_PRIOR_ACCEPTED = 3.0  # prior pseudo-counts: a fresh request starts at a = 0.75
_PRIOR_TRIALS = 4.0
_DECAY = 0.9           # per-step decay of a request's acceptance counts
_COST_SMOOTHING = 0.2
# One observed ratio counts at most this much: a draft pass dearer than a target
# pass already rules speculation out, and a one-off outlier (a kernel compiling on
# first use) must not keep it ruled out.
_MAX_COST_RATIO = 1.0
# When K = 0 looks best, one such decision in this many speculates K = 1 anyway,
# so acceptance and cost keep being measured and a wrong estimate can recover.
_PROBE_EVERY = 16


@dataclass(frozen=True)
class SpeculationConfig:
    method: str | None = None          # "draft" | "ngram" | None (off)
    num_speculative_tokens: int = 4    # K_max
    mode: str = "adaptive"             # "adaptive" | "fixed"
    token_budget: int = 256            # verify tokens per step before the target pass is compute-bound
    initial_cost_ratio: float = 0.1    # draft/target pass time until measured

    def __post_init__(self) -> None:
        if self.method not in (None, "draft", "ngram"):
            raise ValueError(f"speculative_method: must be 'draft' or 'ngram', got {self.method!r}")
        if self.mode not in ("adaptive", "fixed"):
            raise ValueError(f"speculation_mode: must be 'adaptive' or 'fixed', got {self.mode!r}")
        if not 0 <= self.num_speculative_tokens <= 16:
            raise ValueError(f"num_speculative_tokens: must be in [0, 16], got {self.num_speculative_tokens}")

    @property
    def enabled(self) -> bool:
        return self.method is not None and self.num_speculative_tokens > 0


def expected_tokens(acceptance: float, k: int) -> float:
    """E(K) = (1 - a^(K+1)) / (1 - a): mean tokens emitted by one verify of K drafts."""
    if acceptance >= 1.0:
        return float(k + 1)
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


class SpeculationPolicy:
    def __init__(self, config: SpeculationConfig):
        self.config = config
        self.cost_ratio = config.initial_cost_ratio
        self._zero_choices = 0

    def acceptance_rate(self, request: Request) -> float:
        return (request.spec_accepted_ema + _PRIOR_ACCEPTED) / (request.spec_trials_ema + _PRIOR_TRIALS)

    def best_k(self, request: Request, limit: int) -> int:
        k_max = min(self.config.num_speculative_tokens, limit)
        if k_max <= 0:
            return 0
        if self.config.mode == "fixed":
            return k_max
        a = self.acceptance_rate(request)
        rates = [expected_tokens(a, k) / (1.0 + k * self.cost_ratio) for k in range(k_max + 1)]
        best = max(range(k_max + 1), key=lambda k: (rates[k], -k))
        if best == 0:
            self._zero_choices += 1
            if self._zero_choices % _PROBE_EVERY == 0:
                return 1
        return best

    def fit_to_budget(self, choices: dict[Request, int], other_tokens: int) -> dict[Request, int]:
        """Drop the least valuable draft tokens until the step fits the token budget."""
        if self.config.mode == "fixed":
            return choices
        total = other_tokens + sum(1 + k for k in choices.values())
        shrinkable = [r for r in choices if r.params.seed is None]
        while total > self.config.token_budget:
            candidates = [r for r in shrinkable if choices[r] > 0]
            if not candidates:
                break
            # The K-th draft of a request is worth a^K expected tokens.
            victim = min(candidates, key=lambda r: self.acceptance_rate(r) ** choices[r])
            choices[victim] -= 1
            total -= 1
        return choices

    def observe(self, request: Request, proposed: int, accepted: int) -> None:
        """Fold one verify result into the request's decayed acceptance counts."""
        if proposed <= 0:
            return
        trials = accepted + (1 if accepted < proposed else 0)  # stops at the first rejection
        request.spec_accepted_ema = _DECAY * request.spec_accepted_ema + accepted
        request.spec_trials_ema = _DECAY * request.spec_trials_ema + trials

    def observe_cost(self, timings: StepTimings) -> None:
        """Track r = (seconds per draft pass) / (seconds per target pass)."""
        if timings.draft_passes > 0 and timings.target_seconds > 0:
            ratio = min(timings.draft_seconds / timings.draft_passes / timings.target_seconds, _MAX_COST_RATIO)
            self.cost_ratio += _COST_SMOOTHING * (ratio - self.cost_ratio)


@dataclass
class SpecCounters:
    """Engine-wide speculation totals."""

    num_drafts: int = 0           # verify steps that checked at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: drafts accepted at position i
    proposed_per_position: list[int] = field(default_factory=list)

    def record(self, proposed: int, accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += proposed
        self.num_accepted_tokens += accepted
        for counts, upto in ((self.proposed_per_position, proposed), (self.accepted_per_position, accepted)):
            counts.extend([0] * (proposed - len(counts)))
            for i in range(upto):
                counts[i] += 1

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Mean tokens emitted per verify step (accepted drafts + the one extra token)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0
