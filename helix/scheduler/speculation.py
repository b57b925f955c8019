"""How many draft tokens the requests of a step speculate.

With per-token acceptance rate a, proposing K drafts yields on average
E(K) = (1 - a^(K+1)) / (1 - a) tokens per verify. What a step costs is
measured rather than modelled: the engine reports the wall period of each
step with decoding requests (`observe_step`), and the policy keeps one
estimate per (batch-size class, K), the class being the number of decoding
requests rounded up to a power of two. In adaptive mode a step takes the K in
[0, K_max] with the most expected tokens per second,
sum_i E(a_i, K) / T(class, K), where a_i is each request's decayed
acceptance; K = 0 is plain decoding, which a K > 0 must beat by a margin.
Acceptance counts age with each verify and also without one (a request's
per token it decodes plainly, the engine-wide ones per step without drafts):
otherwise a run of rejections that stops speculation would also stop every
measurement that could resume it.

Measured, because a step's cost is not the sum of its passes: a speculative
step cannot be scheduled ahead of the previous step's results (the next step
depends on how many drafts were accepted), pays host work for every pass, and
at large batches its verify tokens make the target pass compute-bound. Each of
these moves the break-even point, and differently per card, model pair and
batch size.

Exploration: a class first measures K = 0, then K_max. A K between measured
ones is priced by linear interpolation between its nearest measured
neighbours; that is optimistic, since a step's cost jumps from K = 0 to K = 1
(the draft passes and the lost overlap) and then grows about linearly, so a K
is tried when it might be best and is measured from then on. Once per probe
interval two steps try a K next to the best one (one more, one fewer), plain
decoding or K_max, in turn (the first step of a K after steps without drafts
also catches the draft model up, and is not measured); the interval doubles
each time a probe leaves the best K unchanged, so a wrong or stale estimate
recovers while a settled choice costs little. Probes are also paced by what
they cost: the time a probe's steps lost against the best K (what they took
beyond the period at which their K would have matched it) must stay under
_PROBE_SHARE of the class's step time. Near the best K a probe loses little
and this never delays it; at large batches, where a speculative round can
cost ten plain positions, it spaces probes by seconds of plain decoding
rather than by a count of steps. K_max is among the probes
because neighbours alone can leave a stale K_max unmeasured for good: when
one draft costs as much as it gains, probes next to plain decoding never
move the choice, and the line from K = 1 to a K_max whose first step stalled
prices every K between high. Only steps where every request decodes are
measured: a prompt chunk's cost says nothing about K.

A speculative K's estimate is the median of its last few periods (of an
even count, the lower middle one: a K probed twice after a stall takes the
probe's period). A speculative step is timed from its own scheduling, so a
stall lengthens only the period it falls in, and the median leaves out up to
half of them. Plain decoding's estimate is the median of the means of
neighbouring periods instead. Plain steps run scheduled ahead of one another,
so each period is measured from the previous step's results: one read late
makes that period long and the next one short, by the same amount. With
multi-steps that happens step after step (the host stages the next
multi-step while the device still runs this one), so the periods alternate,
long and short; the median of the periods alone would settle on either, and
the short one prices plain decoding far below its cost. A pair of neighbours
keeps their sum, which is the wall time they took, and the median of the
pairs' means keeps the typical pair where a stall spoils two of them (with
fewer than five periods, too few pairs to outvote a stall, it is the median
of the periods too). Pairs are for plain decoding only: two stalls in a row
spoil three pairs, which outvote the rest of a window. A period is counted
as at most twice the estimate, so a first-use stall cannot rule a K out
before probes outvote it.

Seeded requests always speculate K_max (capped by what they may still
generate): with a seed the sampled tokens depend on K, and they must depend
only on the request, never on the batch or the clock.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from helix.scheduler.request import Request

# A request's acceptance estimate starts from the engine-wide one, held as this
# many pseudo-trials; the engine-wide estimate starts from a = 0.75.
_PRIOR_ACCEPTED = 6.0
_PRIOR_TRIALS = 8.0
_DECAY = 0.9           # per-verify decay of a request's acceptance counts
# Per token decoded without drafts (a verify emits ~2.5 tokens at a = 0.7, so
# about _DECAY per verify's worth): a request that stopped speculating after a
# run of bad luck measures nothing, and without this its estimate would keep
# it from speculating for good.
_FADE_PER_TOKEN = 0.96
_GLOBAL_DECAY = 0.99   # decay of the engine-wide counts per verify, and per step without drafts
# An estimate is taken from a K's last _WINDOW periods (`_typical`), each
# counted as at most _MAX_RISE times the estimate before it (for a K not
# measured yet, its price on the line): stalls (a kernel compiling, a collection
# pause) only ever add time, so one must not rule a K out.
_WINDOW = 6
_MAX_RISE = 2.0
_FIRST_PROBE_INTERVAL = 16
_MAX_PROBE_INTERVAL = 1024
# The most of a class's step time that probes may lose against its best K.
_PROBE_SHARE = 0.03
# Speculation must promise this much more than plain decoding. A speculative step
# cannot have the next step scheduled ahead of it, and the step after it pays
# for restarting that overlap in its own period; the margin covers that, and
# noise, near the break-even point.
_SPECULATION_MARGIN = 1.1


@dataclass(frozen=True)
class SpeculationConfig:
    method: str | None = None          # "draft" | "ngram" | None (off)
    num_speculative_tokens: int = 4    # K_max
    mode: str = "adaptive"             # "adaptive" | "fixed"

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


def batch_class(num_decoding: int) -> int:
    """The number of decoding requests rounded up to a power of two: steps of
    2^(c-1) + 1 to 2^c requests share class 2^c. A full batch of a power-of-two
    max_num_seqs and that batch less a few requests share one class."""
    return 1 << max(0, num_decoding - 1).bit_length()


@dataclass
class _ClassState:
    """What one batch-size class has measured and when it probes next."""

    periods: dict[int, float] = field(default_factory=dict)  # K -> estimated step seconds
    recent: dict[int, deque[float]] = field(default_factory=dict)  # K -> its last periods, capped
    decisions: int = 0
    best: int = -1
    probe_interval: int = _FIRST_PROBE_INTERVAL
    next_probe: int = _FIRST_PROBE_INTERVAL
    probes: int = 0        # probes since the best K last moved
    probe_up: bool = True  # the direction it last moved
    repeat: int | None = None  # a probe's K, for its second step
    # Seconds of this class's steps to run before the next probe: each probe step
    # adds the time it lost / _PROBE_SHARE, every other step pays its own time off.
    probe_wait: float = 0.0


@dataclass(frozen=True)
class StepPlan:
    """The K a step's decoding requests were given, and how many there were.
    `steady`: no speculating request had a draft model far behind it, so the
    step's period is what the K costs step after step (a first step after
    steps without drafts also catches the draft model up). `break_even`, for
    a probe only: the period (seconds per position or round) at which its K
    would have matched the best K's rate, by the estimates when it was chosen."""

    num_decoding: int
    k: int
    steady: bool = True
    break_even: float | None = None


# (request, the most drafts it may take: max_tokens and max_model_len leave room for no more)
Decoding = list[tuple[Request, int]]


class SpeculationPolicy:
    def __init__(self, config: SpeculationConfig):
        self.config = config
        self._classes: dict[int, _ClassState] = {}
        self._accepted = 0.0  # engine-wide decayed counts of accepted drafts / acceptance trials
        self._trials = 0.0

    def acceptance_rate(self, request: Request) -> float:
        """The request's decayed acceptance, drawn towards the engine-wide rate: a few
        verifies alone are too noisy to stop speculating on."""
        prior = (self._accepted + _PRIOR_ACCEPTED) / (self._trials + _PRIOR_TRIALS)
        return (request.spec_accepted_ema + _PRIOR_TRIALS * prior) / (request.spec_trials_ema + _PRIOR_TRIALS)

    def rounds_needed(self, request: Request, k: int, remaining: int) -> int:
        """The verifies of K drafts `request` is expected to take for `remaining`
        more tokens, at E(a, K) tokens each (a: its acceptance estimate)."""
        if remaining <= 0:
            return 0
        a = self.acceptance_rate(request)
        return math.ceil(remaining / sum(a ** j for j in range(k + 1)) - 1e-9)  # E <= K + 1: one or more

    # -- deciding ------------------------------------------------------------------
    def plan(self, decoding: Decoding) -> int:
        """The K the next step would give its unseeded requests (changes nothing)."""
        return self._plan(decoding)[0]

    def choose(self, decoding: Decoding) -> tuple[dict[Request, int], StepPlan]:
        """K per decoding request for this step, counting the decision."""
        k, best, break_even = self._plan(decoding)
        if self.config.mode == "adaptive" and decoding:
            self._count_decision(self._classes.setdefault(batch_class(len(decoding)), _ClassState()), k, best)
            if k == 0:  # no verify will update the engine-wide counts: they age as one would
                self._accepted *= _GLOBAL_DECAY
                self._trials *= _GLOBAL_DECAY
        k_max = self.config.num_speculative_tokens
        choices = {request: max(0, min(k_max if request.params.seed is not None else k, limit))
                   for request, limit in decoding}
        return choices, StepPlan(len(decoding), k, break_even=break_even)

    def _plan(self, decoding: Decoding) -> tuple[int, int, float | None]:
        """(K for this step, the K with the best measured rate, and for a probe
        the period at which its K would match the best one's rate)."""
        k_max = self.config.num_speculative_tokens
        if self.config.mode == "fixed":
            return k_max, k_max, None
        if not decoding:
            return 0, 0, None
        state = self._classes.get(batch_class(len(decoding)), _ClassState())
        for anchor in (0, k_max):
            if anchor not in state.periods:
                return anchor, anchor, None
        tokens = self._expected_batch_tokens(decoding)
        margins = [_SPECULATION_MARGIN if k else 1.0 for k in range(k_max + 1)]
        rates = [tokens[k] / _period(state.periods, k) / margins[k] for k in range(k_max + 1)]
        best = max(range(k_max + 1), key=lambda k: (rates[k], -k))
        if state.repeat is not None:
            k = state.repeat
        elif state.decisions + 1 < state.next_probe or state.probe_wait > 0:
            return best, best, None
        else:
            near = (best + 1, best - 1) if state.probe_up else (best - 1, best + 1)
            order = (*near, 0, k_max)
            candidates = [k for k in dict.fromkeys(order) if 0 <= k <= k_max and k != best]
            k = candidates[state.probes % len(candidates)]
        return k, best, (tokens[k] / margins[k] / rates[best] if k != best else None)

    def _expected_batch_tokens(self, decoding: Decoding) -> list[float]:
        """[K]: sum over the requests of E(a_i, min(K, limit_i)), for K in [0, K_max].
        E(a, K) sums a^j for j <= K, so the batch's terms are summed per power
        once and the result is their running sum (runs every step, per request)."""
        k_max = self.config.num_speculative_tokens
        per_power = [0.0] * (k_max + 1)  # [j]: sum of a_i^j over requests that may draft j tokens
        for request, limit in decoding:
            a = self.acceptance_rate(request)
            term = 1.0
            for j in range(max(0, min(k_max, limit)) + 1):
                per_power[j] += term
                term *= a
        return list(itertools.accumulate(per_power))

    @staticmethod
    def _count_decision(state: _ClassState, k: int, best: int) -> None:
        state.decisions += 1
        if state.repeat is not None:
            state.repeat = None
            return
        if best != state.best:  # the choice moved: look around it again soon, first further that way
            state.probe_up = best > state.best
            state.best = best
            state.probes = 0
            state.probe_interval = _FIRST_PROBE_INTERVAL
            state.next_probe = state.decisions + _FIRST_PROBE_INTERVAL
        elif k != best:  # a probe of a settled choice: the next one waits twice as long
            state.repeat = k  # two steps: the first may only catch the draft model up
            state.probes += 1
            state.probe_interval = min(2 * state.probe_interval, _MAX_PROBE_INTERVAL)
            state.next_probe = state.decisions + state.probe_interval

    # -- measuring -----------------------------------------------------------------
    def observe(self, request: Request, proposed: int, accepted: int) -> None:
        """Fold one verify result into the request's decayed acceptance counts."""
        if proposed <= 0:
            return
        trials = accepted + (1 if accepted < proposed else 0)  # stops at the first rejection
        request.spec_accepted_ema = _DECAY * request.spec_accepted_ema + accepted
        request.spec_trials_ema = _DECAY * request.spec_trials_ema + trials
        self._accepted = _GLOBAL_DECAY * self._accepted + accepted
        self._trials = _GLOBAL_DECAY * self._trials + trials

    def fade(self, request: Request, num_tokens: int) -> None:
        """Age the request's acceptance counts over tokens it decoded without drafts,
        drawing its estimate back towards the engine-wide rate."""
        factor = _FADE_PER_TOKEN ** num_tokens
        request.spec_accepted_ema *= factor
        request.spec_trials_ema *= factor

    def observe_step(self, plan: StepPlan, seconds: float, positions: int = 1) -> None:
        """Fold in the wall period of a step that ran `plan` over `positions`
        positions (plain decoding) or rounds (speculation)."""
        if self.config.mode != "adaptive" or plan.num_decoding <= 0 or seconds <= 0:
            return
        state = self._classes.setdefault(batch_class(plan.num_decoding), _ClassState())
        period = seconds / positions
        if plan.break_even is not None:  # what the probe took, stalls and all
            state.probe_wait += positions * max(0.0, period - plan.break_even) / _PROBE_SHARE
        else:
            state.probe_wait = max(0.0, state.probe_wait - seconds)
        if not plan.steady:
            return
        estimate = _prior_period(state.periods, plan.k, self.config.num_speculative_tokens)
        recent = state.recent.setdefault(plan.k, deque(maxlen=_WINDOW))
        recent.append(period if estimate is None else min(period, _MAX_RISE * estimate))
        state.periods[plan.k] = _typical(recent, paired=plan.k == 0)

    def step_seconds(self, num_decoding: int) -> dict[int, float]:
        """Estimated step seconds per K at this batch size (those measured so far)."""
        return dict(self._classes.get(batch_class(num_decoding), _ClassState()).periods)

    def estimates(self) -> dict[int, dict[int, float]]:
        """Estimated step seconds by batch-size class, then K (those measured so far)."""
        return {cls: dict(state.periods) for cls, state in sorted(self._classes.items())}


def _typical(periods: Sequence[float], paired: bool) -> float:
    """A K's estimate from its recent periods, oldest first: the median (the
    lower middle one) of the periods; `paired` (steps scheduled ahead, timed
    from the previous step's results), once there are five or more, the
    median of the means of neighbouring periods, which keeps a long period
    read late and the short one after it at their mean, and of four or more
    pairs leaves out the two a stall is in."""
    if not paired or len(periods) < 5:
        return statistics.median_low(periods)
    return statistics.median_low([(first + second) / 2 for first, second in itertools.pairwise(periods)])


def _prior_period(periods: dict[int, float], k: int, k_max: int) -> float | None:
    """What a period of K is expected to be before this one: its estimate; for a K
    not measured yet, its price on the line; for K_max measured first after plain
    decoding, K_max + 1 plain steps (what verifying that many tokens per request
    costs where the target pass is compute-bound, and more than it costs where
    it is not)."""
    if k in periods or (0 in periods and k_max in periods):
        return _period(periods, k)
    return (1 + k) * periods[0] if 0 in periods else None


def _period(periods: dict[int, float], k: int) -> float:
    """The measured period of K, else the line between the nearest measured K's
    below and above it (K = 0 and K_max are always measured)."""
    if k in periods:
        return periods[k]
    below = max(j for j in periods if j < k)
    above = min(j for j in periods if j > k)
    return periods[below] + (k - below) * (periods[above] - periods[below]) / (above - below)


@dataclass
class SpecCounters:
    """Engine-wide speculation totals."""

    num_drafts: int = 0           # verify steps that checked at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: drafts accepted at position i
    proposed_per_position: list[int] = field(default_factory=list)
    steps_by_k: dict[int, int] = field(default_factory=dict)  # steps with decoding requests, by their plan's K
    rounds_past_stop: int = 0     # chained rounds that ran after their request had stopped (tokens dropped)

    def record_past_stop(self, verifies: list[tuple[int, int]], emitted: int) -> None:
        """Count the verifies (in order, each emitting its accepted drafts + 1) that
        came after the first `emitted` tokens, which is all the request kept."""
        produced = 0
        for used, (_, accepted) in enumerate(verifies):
            if produced >= emitted:
                self.rounds_past_stop += len(verifies) - used
                return
            produced += accepted + 1

    def record_step(self, k: int) -> None:
        self.steps_by_k[k] = self.steps_by_k.get(k, 0) + 1

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
        """Mean tokens emitted per verify step (accepted drafts + 1)."""
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0
