"""How many draft tokens each request speculates this step.

With per-token acceptance rate a, proposing K drafts yields on average
E(K) = (1 - a^(K+1)) / (1 - a) tokens per step, at a cost of one target pass
plus K draft passes. The first pass (catch-up over the tokens since the last
draft, one per speculating step) costs more than each later one (a single
token each, run as one graph where it can), so in target-pass units a step
costs C(K) = 1 + r1 + (K - 1) r for K >= 1, with r1 and r the measured
first-pass and later-pass time ratios to the target pass. Each request takes
the K in [0, K_max] that maximises E(K) / C(K); K = 0 (plain decoding, C = 1)
wins whenever speculation would cost more than it returns.

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
# When a K below the limit looks best, one such decision in this many speculates
# one draft more, so acceptance and the cost of that pass keep being measured and
# a wrong estimate can recover (from K = 0, the first pass; from K = 1, the later ones).
_PROBE_EVERY = 16


@dataclass(frozen=True)
class SpeculationConfig:
    method: str | None = None          # "draft" | "ngram" | None (off)
    num_speculative_tokens: int = 4    # K_max
    mode: str = "adaptive"             # "adaptive" | "fixed"
    token_budget: int = 256            # verify tokens per step before the target pass is compute-bound
    initial_cost_ratio: float = 0.1    # draft/target pass time (each pass) until measured

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
        self.first_pass_ratio = config.initial_cost_ratio  # r1: the first draft pass / the target pass
        self.cost_ratio = config.initial_cost_ratio        # r: each later draft pass / the target pass
        self._short_choices = 0  # decisions below the limit, for probing

    def acceptance_rate(self, request: Request) -> float:
        return (request.spec_accepted_ema + _PRIOR_ACCEPTED) / (request.spec_trials_ema + _PRIOR_TRIALS)

    def best_k(self, request: Request, limit: int) -> int:
        k_max = min(self.config.num_speculative_tokens, limit)
        if k_max <= 0:
            return 0
        if self.config.mode == "fixed":
            return k_max
        a = self.acceptance_rate(request)
        rates = [expected_tokens(a, k) / self.step_cost(k) for k in range(k_max + 1)]
        best = max(range(k_max + 1), key=lambda k: (rates[k], -k))
        if best < k_max:
            self._short_choices += 1
            if self._short_choices % _PROBE_EVERY == 0:
                return best + 1
        return best

    def step_cost(self, k: int) -> float:
        """C(K) in target-pass units."""
        return 1.0 if k == 0 else 1.0 + self.first_pass_ratio + (k - 1) * self.cost_ratio

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
        """Track r1 and r, the first and each later draft pass's time over the target pass's."""
        if timings.draft_passes <= 0 or timings.target_seconds <= 0:
            return
        self.first_pass_ratio = _smoothed(self.first_pass_ratio, timings.first_draft_seconds / timings.target_seconds)
        if timings.draft_passes > 1:
            later = timings.later_draft_seconds / (timings.draft_passes - 1) / timings.target_seconds
            self.cost_ratio = _smoothed(self.cost_ratio, later)


def _smoothed(estimate: float, observed: float) -> float:
    return estimate + _COST_SMOOTHING * (min(observed, _MAX_COST_RATIO) - estimate)


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
