"""Adaptive K: each step takes the K with the most expected tokens per measured
second at its batch size, tries every K once, and keeps re-trying the best K's
neighbours, plain decoding and K_max ever more rarely, so a wrong or stale
estimate recovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix import LLM
from helix.sampling_params import SamplingParams
from helix.scheduler.outputs import ScheduledRequest, SchedulerOutput
from helix.scheduler.request import Request
from helix.scheduler.speculation import (Decoding, SpecCounters, SpeculationConfig, SpeculationPolicy,
                                        StepPlan, batch_class)

K_MAX = 4


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verify of K drafts emits on average: (1 - a^(K+1)) / (1 - a)."""
    return (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def request(name: str = "r", seed: int | None = None) -> Request:
    return Request(name, [1, 2, 3], SamplingParams(max_tokens=100, seed=seed), eos_token_ids=frozenset())


def batch(size: int, limit: int = 100) -> Decoding:
    return [(request(f"r{i}"), limit) for i in range(size)]


def policy(mode: str = "adaptive") -> SpeculationPolicy:
    return SpeculationPolicy(SpeculationConfig(method="draft", num_speculative_tokens=K_MAX, mode=mode))


def small_batch_ms(k: int) -> float:
    """Step periods like a 1B target with a small draft at batch 1: plain steps run
    back to back (1.3 ms); a speculative step pays 2.0 ms plus 0.2 per further draft."""
    return 1.3 if k == 0 else 2.0 + 0.2 * (k - 1)


def run(spec: SpeculationPolicy, decoding: Decoding, steps: int, step_ms: dict[int, float] | None = None,
        cost=small_batch_ms) -> list[int]:
    """`steps` decisions, each followed by its measured period; returns the Ks chosen."""
    chosen = []
    for _ in range(steps):
        choices, plan = spec.choose(decoding)
        chosen.append(plan.k)
        assert all(k == min(plan.k, limit) for (r, limit), k in zip(decoding, choices.values()))
        spec.observe_step(plan, (step_ms[plan.k] if step_ms else cost(plan.k)) / 1e3)
    return chosen


def test_plain_and_k_max_are_measured_first_then_ks_that_might_be_best() -> None:
    spec = policy()
    chosen = run(spec, batch(1), 12)
    # Between K = 0 (1.3 ms) and K = 4 (2.6 ms), K = 3 is priced on the line at 2.275 ms:
    # E(3) / 2.275 = 1.20 tokens/ms (a = 0.75, the prior) would beat E(4) / 2.6 = 1.17.
    # Its estimate rises from that price towards the measured 2.4 ms, at which it does
    # not; K = 2 on the line (2.03 ms) cannot either.
    assert chosen[:3] == [0, 4, 3] and set(chosen[3:6]) <= {3, 4} and chosen[6:] == [4] * 6
    assert expected_tokens(0.75, 3) / 2.275 > expected_tokens(0.75, 4) / 2.6 > expected_tokens(0.75, 3) / 2.4
    assert expected_tokens(0.75, 2) / (1.3 + 2 / 3 * 1.1) < expected_tokens(0.75, 4) / 2.6


def test_plain_decoding_where_it_measures_faster_and_speculation_where_it_pays() -> None:
    """At batch 200 the verify tokens make the target pass compute-bound: a step of
    K drafts costs about (1 + K) plain steps, so no K pays; at batch 1 K = 4 does."""
    spec = policy()
    large = run(spec, batch(200), 40, cost=lambda k: 10.0 * (1 + k))
    small = run(spec, batch(1), 40)
    assert large[2:].count(0) >= 36 and small[5:].count(4) >= 33
    assert spec.plan(batch(200)) == 0 and spec.plan(batch(1)) == 4
    assert batch_class(200) != batch_class(1)


def probe_starts(chosen: list[int]) -> list[int]:
    """Where probes of a K > 0 start, after the first two (anchor) steps, checking
    that each runs two steps."""
    probed = [i for i, k in enumerate(chosen) if i > 1 and k != 0]
    starts = [i for i in probed if i - 1 not in probed]
    assert probed == sorted(starts + [i + 1 for i in starts])
    return starts


def test_a_full_batch_and_that_batch_less_a_few_share_a_class() -> None:
    """Classes round up to a power of two: a saturated server at max_num_seqs = 256
    and the same batch after a few requests finish measure one set of estimates,
    rather than exploring every K twice."""
    assert batch_class(256) == batch_class(255) == batch_class(129) != batch_class(128)
    assert [batch_class(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 8]


def test_probes_of_a_settled_choice_grow_sparse() -> None:
    """A probe runs two steps (the first may only catch the draft model up), and
    the wait before the next one at least doubles while plain decoding stays best."""
    spec = policy()
    starts = probe_starts(run(spec, batch(64), 3000, cost=lambda k: 10.0 * (1 + k)))
    assert starts and len(starts) <= 8
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(gap >= 32 * 2 ** i for i, gap in enumerate(gaps)) and gaps[-1] >= 512


def test_costly_probes_are_spaced_by_the_time_they_lose() -> None:
    """Where a speculative step costs as much as 100 plain steps (a large batch run
    eagerly), probes spaced by a count of steps alone would take most of the
    time. What they are expected to lose stays within a few percent of it."""
    spec = policy()

    def cost(k: int) -> float:
        return 1.0 if k == 0 else 100.0

    chosen = run(spec, batch(64), 12000, cost=cost)
    starts = probe_starts(chosen)
    plain_rate = 1.0 / cost(0)  # tokens per ms per request

    def lost(k: int) -> float:  # the time a step of K takes beyond what plain decoding would take for its tokens
        return cost(k) - expected_tokens(0.75, k) / plain_rate

    probe_loss = sum(lost(chosen[i]) + lost(chosen[i + 1]) for i in starts)
    total = sum(cost(k) for k in chosen)
    first_probe = 2 * lost(chosen[starts[0]])  # before any probe has cost anything
    assert len(starts) >= 2
    assert probe_loss - first_probe <= 0.04 * total
    assert all(k == 0 for i, k in enumerate(chosen[2:], 2) if not any(s <= i <= s + 1 for s in starts))


def test_a_stall_does_not_rule_a_k_out() -> None:
    """K = 4's first step stalls (a kernel compiling: 800 ms). It counts as twice
    its prior, ten plain steps, which makes every K > 0 look dear, so plain
    decoding wins; probes then measure K = 1, 2, 3 and 4 at their usual cost, one
    after the other, and K = 4 takes over."""
    spec = policy()
    assert run(spec, batch(1), 1) == [0]
    run(spec, batch(1), 1, step_ms={4: 800.0})
    assert spec.step_seconds(1)[4] == pytest.approx(2 * 5 * small_batch_ms(0) / 1e3)
    chosen = run(spec, batch(1), 120)
    assert chosen[:14] == [0] * 14
    assert chosen[-20:].count(4) >= 18  # and the odd probe of K = 3


def test_a_stalled_k_max_recovers_where_one_draft_does_not_pay() -> None:
    """K = 4 pays (3.05 tokens per 2.6 ms against 1 per 1.3 ms) but its first step
    stalled, and K = 1 costs as much as it gains, so probes next to plain decoding
    never move the choice and the line between K = 1 and the stalled K = 4 prices
    K = 2 and 3 high. Probes also try K_max: its estimate recovers and it takes over."""
    def cost(k: int) -> float:
        return 1.3 if k == 0 else 2.3 + 0.1 * (k - 1)

    spec = policy()
    assert run(spec, batch(1), 1, cost=cost) == [0]
    run(spec, batch(1), 1, step_ms={4: 800.0})
    assert expected_tokens(0.75, 1) / cost(1) / 1.1 < 1 / cost(0)  # K = 1 alone never beats plain decoding
    chosen = run(spec, batch(1), 200, cost=cost)
    assert chosen[-50:].count(4) >= 45


def test_a_k_that_got_dearer_is_dropped() -> None:
    spec = policy()
    assert run(spec, batch(1), 20)[-10:].count(4) >= 8  # and the odd probe
    assert run(spec, batch(1), 20, cost=lambda k: small_batch_ms(k) * (3 if k else 1))[-10:] == [0] * 10


def test_seeded_requests_keep_k_max_and_limits_cap_every_k() -> None:
    spec = policy()
    run(spec, batch(3), 10, cost=lambda k: 10.0 * (1 + k))
    seeded, plain, short = request("seeded", seed=7), request("plain"), request("short")
    choices, plan = spec.choose([(seeded, 100), (plain, 100), (short, 1)])
    assert plan.k == 0 and choices == {seeded: K_MAX, plain: 0, short: 0}
    fixed_choices, _ = policy("fixed").choose([(seeded, 100), (plain, 100), (short, 1)])
    assert fixed_choices == {seeded: K_MAX, plain: K_MAX, short: 1}


def test_fixed_mode_ignores_measurements() -> None:
    spec = policy("fixed")
    assert run(spec, batch(8), 20, cost=lambda k: 10.0 * (1 + k)) == [K_MAX] * 20
    assert spec.step_seconds(8) == {}


def test_only_steps_with_decoding_requests_are_measured(tiny_model_dirs: dict[str, Path]) -> None:
    """One-token generations run only prefill steps: no K was chosen, and every
    estimate stays empty."""
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_kv_blocks=256, block_size=4)
    llm.generate([list(range(1, 40))] * 3, SamplingParams(max_tokens=1), use_tqdm=False)
    speculation = llm.engine.scheduler.speculation
    assert all(speculation.step_seconds(n) == {} for n in range(1, 4))
    llm.generate([list(range(1, 40))] * 3, SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert speculation.step_seconds(3)


def test_plan_matches_the_next_choice() -> None:
    """`plan` (what scheduling ahead asks) must agree with the next `choose`."""
    spec = policy()
    decoding = batch(5)
    for step in range(300):
        planned = spec.plan(decoding)
        _, plan = spec.choose(decoding)
        assert plan.k == planned
        spec.observe_step(StepPlan(5, plan.k), (1.0 + (step % 7) * 0.1 + plan.k * 0.3) / 1e3)


def test_a_request_starts_from_the_engine_wide_acceptance() -> None:
    spec = policy()
    for i in range(50):  # earlier requests: 9 drafts accepted, then one rejected (a = 0.9)
        spec.observe(request(f"old{i}"), 10, 9)
    new = request("new")
    assert spec.acceptance_rate(new) > 0.85
    spec.observe(new, 4, 0)  # one unlucky verify does not make it a bad request
    assert spec.acceptance_rate(new) > 0.6
    low = policy()
    for i in range(50):  # the first draft rejected every time
        low.observe(request(f"old{i}"), 4, 0)
    assert low.acceptance_rate(request("new")) < 0.3


def test_speculation_must_beat_plain_decoding_by_a_margin() -> None:
    """Speculation measured 5% ahead of plain decoding is within what the lost
    overlap after a speculative step and noise can account for: plain decoding
    keeps the steps."""
    spec = policy()
    chosen = run(spec, batch(1), 60, cost=lambda k: 1.0 if k == 0 else expected_tokens(0.75, k) / 1.05)
    assert chosen[:2] == [0, 4]
    speculating = [i for i, k in enumerate(chosen) if i >= 20 and k]
    assert len(speculating) <= 4 and speculating[::2] == [i - 1 for i in speculating[1::2]]  # two probes, two steps each


def test_steps_without_a_decoding_request_are_not_measured(tiny_model_dirs: dict[str, Path]) -> None:
    """Scheduled ahead, a step can be empty (its only request ends in the step in
    flight): its near-zero period would make plain decoding look free."""
    model = str(tiny_model_dirs["llama"])
    scheduler = LLM(model, draft_model=model, num_kv_blocks=64, block_size=4).engine.scheduler
    scheduler.observe_step_period(SchedulerOutput([], spec_plan=StepPlan(1, 0)), 1e-6)
    assert scheduler.speculation.step_seconds(1) == {}


def test_a_probe_after_plain_steps_is_measured_once_the_draft_caught_up(tiny_model_dirs: dict[str, Path]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_kv_blocks=128, block_size=4)
    scheduler = llm.engine.scheduler
    for k in range(K_MAX + 1):  # plain decoding measured far cheaper: the draft model falls behind
        scheduler.speculation.observe_step(StepPlan(1, k), 1e-3 if k == 0 else 1e3)
    plans = []
    schedule = scheduler.schedule

    def keeping(*args: object, **kwargs: object) -> SchedulerOutput:
        output = schedule(*args, **kwargs)
        plans.append(output.spec_plan)
        return output

    scheduler.schedule = keeping  # type: ignore[method-assign]
    llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True), use_tqdm=False)
    probes = [i for i, plan in enumerate(plans) if plan is not None and plan.k]
    assert probes, plans
    first = probes[0]
    assert plans[first].steady is False  # it caught the draft model up over the plain steps before it
    assert plans[first + 1].k == plans[first].k and plans[first + 1].steady


def test_batch_tokens_sum_each_requests_expected_tokens_within_its_limit() -> None:
    spec = policy()
    spec.observe(request("old"), 4, 2)
    decoding = []
    for i, (accepted, trials, limit) in enumerate([(0, 0, 100), (3, 4, 2), (1, 5, 0), (6, 6, 1), (0, 9, 100)]):
        item = request(f"r{i}")
        item.spec_accepted_ema, item.spec_trials_ema = accepted, trials
        decoding.append((item, limit))
    tokens = spec._expected_batch_tokens(decoding)
    for k in range(K_MAX + 1):
        want = sum(expected_tokens(spec.acceptance_rate(item), min(k, limit)) for item, limit in decoding)
        assert abs(tokens[k] - want) < 1e-9


@pytest.mark.parametrize("accepted,trials,k,remaining", [(0, 0, 4, 10), (9, 10, 3, 11), (1, 9, 4, 5),
                                                         (0, 0, 2, 1), (5, 5, 4, 0)])
def test_rounds_needed_cover_the_remaining_tokens_at_the_expected_rate(accepted: float, trials: float, k: int,
                                                                       remaining: int) -> None:
    spec = policy("fixed")
    item = request()
    item.spec_accepted_ema, item.spec_trials_ema = accepted, trials
    per_round = expected_tokens(spec.acceptance_rate(item), k)
    rounds = spec.rounds_needed(item, k, remaining)
    if remaining == 0:
        assert rounds == 0
    else:
        assert (rounds - 1) * per_round < remaining <= rounds * per_round


@pytest.mark.parametrize("emitted,past", [(5, 1), (8, 1), (9, 0), (11, 0), (1, 2), (4, 2)])
def test_rounds_past_stop_are_those_after_the_tokens_the_request_kept(emitted: int, past: int) -> None:
    """Three chained verifies emitting 4, 4 and 2 tokens: a request that kept the
    first `emitted` of those 10 stopped inside the round that produced its last one."""
    counters = SpecCounters()
    counters.record_past_stop([(3, 3), (3, 3), (3, 1)], emitted)
    assert counters.rounds_past_stop == past


def test_a_multi_step_is_measured_per_position(tiny_model_dirs: dict[str, Path]) -> None:
    """Plain decoding in multi-steps of 4 costs a quarter of the multi-step's
    period per token: that is what K = 0 is priced at."""
    model = str(tiny_model_dirs["llama"])
    scheduler = LLM(model, draft_model=model, num_kv_blocks=64, block_size=4).engine.scheduler
    request = Request("x", [5, 6, 7], SamplingParams(max_tokens=8), eos_token_ids=frozenset())
    multi = ScheduledRequest(request, 2, 1, (0,), num_steps=4)
    scheduler.observe_step_period(SchedulerOutput([multi], spec_plan=StepPlan(1, 0)), 4e-3)
    assert scheduler.speculation.step_seconds(1) == {0: pytest.approx(1e-3)}


@pytest.mark.parametrize("k_max_ms,speculates", [(2.6, True), (20.0, False)])
def test_the_step_after_a_prompt_speculates_where_the_policy_would(tiny_model_dirs: dict[str, Path],
                                                                     k_max_ms: float, speculates: bool) -> None:
    """The step that finishes a prompt makes its request a decoding one. Where the
    policy would give it drafts, the next step waits for that step's token and
    speculates, rather than run plain decoding scheduled ahead of it; where
    plain decoding is cheaper, it is scheduled ahead as before."""
    model = str(tiny_model_dirs["llama"])
    scheduler = LLM(model, draft_model=model, num_kv_blocks=64, block_size=4).engine.scheduler
    spec = scheduler.speculation
    spec.observe_step(StepPlan(1, 0), 1.3e-3)
    spec.observe_step(StepPlan(1, spec.config.num_speculative_tokens), k_max_ms / 1e3)
    scheduler.add_request(Request("x", [5, 6, 7, 8, 9], SamplingParams(max_tokens=32), eos_token_ids=frozenset()))
    prefill = scheduler.schedule()
    assert prefill.scheduled[0].samples  # the whole prompt: its first token comes back with this step
    assert scheduler.can_schedule_ahead(prefill) is not speculates


def test_a_step_with_a_prompt_chunk_is_not_measured(tiny_model_dirs: dict[str, Path]) -> None:
    """A prompt chunk's cost is not K's: the step it rides in says nothing about K."""
    model = str(tiny_model_dirs["llama"])
    scheduler = LLM(model, draft_model=model, num_kv_blocks=64, block_size=4).engine.scheduler
    decoding = Request("d", [5, 6, 7], SamplingParams(max_tokens=8), eos_token_ids=frozenset())
    prompt = Request("p", list(range(1, 30)), SamplingParams(max_tokens=8), eos_token_ids=frozenset())
    decode = ScheduledRequest(decoding, 2, 1, (0,))
    chunk = ScheduledRequest(prompt, 0, 16, (1, 2, 3, 4), samples=False)
    scheduler.observe_step_period(SchedulerOutput([decode, chunk], spec_plan=StepPlan(1, 0)), 40e-3)
    assert scheduler.speculation.step_seconds(1) == {}
    scheduler.observe_step_period(SchedulerOutput([decode], spec_plan=StepPlan(1, 0)), 1.3e-3)
    assert scheduler.speculation.step_seconds(1) == {0: pytest.approx(1.3e-3)}


def test_plain_periods_read_late_then_early_keep_their_typical_cost() -> None:
    """Plain steps run scheduled ahead, each timed from the previous one's results:
    a result read 0.6 ms late makes its period long and the next one short. The
    estimate keeps the typical 1.3 ms, so K = 4 (3.05 tokens per 2.6 ms) beats
    plain decoding, as it does on average."""
    jitter = iter([0.0, 0.6, -0.6] * 100)

    def cost(k: int) -> float:
        return small_batch_ms(k) + (next(jitter) if k == 0 else 0.0)

    spec = policy()
    chosen = run(spec, batch(1), 60, cost=cost)
    assert spec.step_seconds(1)[0] == pytest.approx(1.3e-3)
    assert chosen[-20:].count(4) >= 18


def test_plain_periods_alternating_long_and_short_are_priced_at_their_mean() -> None:
    """Plain multi-steps are read late step after step: the host stages the next
    one while the device runs this one, so periods alternate 1.85 and 0.75 ms
    per position around a real 1.3 (as measured on an H200). Either alone
    misprices plain decoding; their mean is its cost, also with a stall among
    them, and K = 4 (3.05 tokens per 2.6 ms) beats it."""
    spec = policy()
    for i in range(12):
        spec.observe_step(StepPlan(1, 0), (1.85e-3, 0.75e-3)[i % 2])
    assert spec.step_seconds(1)[0] == pytest.approx(1.3e-3)
    spec.observe_step(StepPlan(1, 0), 0.5)
    spec.observe_step(StepPlan(1, 0), 0.75e-3)
    assert spec.step_seconds(1)[0] == pytest.approx(1.3e-3)
    spec.observe_step(StepPlan(1, K_MAX), 2.6e-3)
    assert spec.plan(batch(1)) > 0


def test_two_stalls_in_a_row_leave_a_speculative_estimate_alone() -> None:
    """A speculative step is timed from its own scheduling, so its periods do not
    alternate: two stalled rounds in a row (the host busy elsewhere, as seen in
    a served run: 3.4 and 3.7 ms among 1.9 ms rounds) are two of six periods,
    and the estimate stays at the typical round."""
    spec = policy()
    spec.observe_step(StepPlan(1, 0), 1.3e-3)
    for ms in (1.89, 1.88, 1.9, 3.36, 3.73, 1.89):
        spec.observe_step(StepPlan(1, K_MAX), ms / 1e3)
    assert spec.step_seconds(1)[K_MAX] == pytest.approx(1.89e-3)


def test_one_period_at_its_cost_outvotes_a_stall() -> None:
    """A probe after plain steps has one measured step (the first catches the draft
    model up): that one period, not a mean with the stall, is K's estimate."""
    spec = policy()
    spec.observe_step(StepPlan(1, 0), 1.3e-3)
    spec.observe_step(StepPlan(1, K_MAX), 0.8)
    spec.observe_step(StepPlan(1, K_MAX), 2.6e-3)
    assert spec.step_seconds(1)[K_MAX] == pytest.approx(2.6e-3)


def test_a_request_that_stopped_speculating_on_bad_luck_tries_again() -> None:
    """Six verifies in a row accept nothing: the request's estimate falls below
    what K_max needs, and without drafts it measures nothing more. Tokens it
    decodes plainly age its counts, so it comes back to the engine-wide rate."""
    spec = policy()
    for k in range(K_MAX + 1):
        spec.observe_step(StepPlan(1, k), small_batch_ms(k) / 1e3)
    for i in range(50):  # the engine-wide rate: 3 of 4 drafts accepted
        spec.observe(request(f"other{i}"), 4, 3)
    unlucky = request("unlucky")
    for _ in range(6):
        spec.observe(unlucky, 4, 0)
    assert spec.plan([(unlucky, 100)]) == 0
    spec.fade(unlucky, 64)
    assert spec.plan([(unlucky, 100)]) == K_MAX


def test_steps_without_drafts_age_the_engine_wide_acceptance() -> None:
    """After a run of rejected drafts nobody speculates, so no verify would ever
    update the engine-wide rate again: steps without drafts age it instead, and
    speculation resumes."""
    spec = policy()
    run(spec, batch(1), 10)
    for i in range(40):
        spec.observe(request(f"unlucky{i}"), 4, 0)
    chosen = run(spec, batch(1), 400)
    assert chosen[:20].count(0) >= 18 and chosen[-20:].count(0) <= 2  # and those two a probe
