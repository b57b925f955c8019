"""The sampler's transforms and draws on small hand-made logits, and
SamplingParams validation. Expected values are worked out by hand."""

from __future__ import annotations

import math
from typing import Sequence

import pytest
import torch
from scipy.stats import chisquare

from helix.sampling_params import SamplingParams
from helix.worker.sampler import SamplingRow, sample, takes_raw_argmax, transform_logits

NEG_INF = float("-inf")


def make_row(params: SamplingParams, prompt: Sequence[int] = (), output: Sequence[int] = (),
             stop_ids: frozenset[int] = frozenset(), generator: torch.Generator | None = None) -> SamplingRow:
    return SamplingRow(params, list(prompt), list(output), stop_ids, generator)


def logits_of(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def log_probs(*probs: float) -> torch.Tensor:
    return logits_of(*(math.log(p) for p in probs))


def kept(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    """Token ids the filters leave possible in a one-row batch."""
    out = transform_logits(logits, [make_row(params)])
    return {i for i, value in enumerate(out[0].tolist()) if value != NEG_INF}


GREEDY = SamplingParams(temperature=0.0)


# -- greedy ------------------------------------------------------------------------


def test_greedy_is_the_argmax() -> None:
    [token] = sample(logits_of(1.0, 3.0, 2.0, 0.5), [make_row(GREEDY)])
    assert token.token_id == 1


def test_greedy_is_the_argmax_after_bias() -> None:
    params = SamplingParams(temperature=0.0, logit_bias={2: 1.5})  # 2.0 + 1.5 beats 3.0
    [token] = sample(logits_of(1.0, 3.0, 2.0, 0.5), [make_row(params)])
    assert token.token_id == 2


def test_greedy_is_the_argmax_after_repetition_penalty() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)  # 3.0 / 2 falls below 2.0
    [token] = sample(logits_of(1.0, 3.0, 2.0, 0.5), [make_row(params, prompt=[1])])
    assert token.token_id == 2


def test_greedy_ignores_temperature_style_filters() -> None:
    params = SamplingParams(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9)
    out = transform_logits(logits_of(1.0, 3.0, 2.0), [make_row(params)])
    assert out[0].tolist() == [1.0, 3.0, 2.0]


@pytest.mark.parametrize(("row", "raw"), [
    (make_row(GREEDY), True),
    (make_row(SamplingParams(temperature=0.0, top_k=1, top_p=0.1)), True),  # filters skip greedy rows
    (make_row(SamplingParams(temperature=0.0, min_tokens=2), output=[4, 5], stop_ids=frozenset({1})), True),
    (make_row(SamplingParams(temperature=0.0, logprobs=0)), False),
    (make_row(SamplingParams(temperature=0.0, logit_bias={2: 1.5})), False),
    (make_row(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[1]), False),
    (make_row(SamplingParams(temperature=0.0, presence_penalty=1.0), output=[1]), False),
    (make_row(SamplingParams(temperature=0.0, min_tokens=2), stop_ids=frozenset({1})), False),
    (make_row(SamplingParams(temperature=0.7)), False),
])
def test_only_rows_choosing_the_raw_argmax_skip_the_transform(row: SamplingRow, raw: bool) -> None:
    """The runner skips the fp32 logits and the transform for rows that take the
    raw argmax: for them the sampled token must be the raw argmax, for any logits."""
    assert takes_raw_argmax(row) is raw
    if raw:
        generator = torch.Generator().manual_seed(0)
        logits = torch.randn((64, 8), generator=generator)
        tokens = [token.token_id for token in sample(logits, [row] * 64)]
        assert tokens == logits.argmax(dim=-1).tolist()


# -- filters -----------------------------------------------------------------------


def test_top_k_keeps_exactly_k_largest() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 32, generator=generator)
    values = logits[0].tolist()
    largest = set(sorted(range(32), key=lambda i: values[i], reverse=True)[:5])
    out = transform_logits(logits, [make_row(SamplingParams(top_k=5))])
    finite = {i for i, v in enumerate(out[0].tolist()) if v != NEG_INF}
    assert finite == largest
    assert all(out[0, i].item() == pytest.approx(values[i]) for i in finite)  # temperature 1: unchanged
    rows = [make_row(SamplingParams(top_k=5), generator=generator)] * 200
    drawn = {t.token_id for t in sample(logits.repeat(200, 1), rows)}
    assert drawn <= largest and len(drawn) > 1


def test_top_k_larger_than_the_vocabulary_keeps_everything() -> None:
    assert kept(logits_of(0.0, 1.0, 2.0), SamplingParams(top_k=10)) == {0, 1, 2}


# Probabilities 0.15, 0.5, 0.05, 0.3 at ids 0..3; sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 0), 0.05 (id 2).
SHUFFLED = (0.15, 0.5, 0.05, 0.3)


@pytest.mark.parametrize("top_p, expected", [
    (0.45, {1}),           # 0.5 alone reaches 0.45
    (0.79, {1, 3}),        # 0.5 + 0.3
    (0.81, {1, 3, 0}),     # 0.5 + 0.3 + 0.15
    (0.97, {1, 3, 0, 2}),
    (1.0, {1, 3, 0, 2}),
])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p: float, expected: set[int]) -> None:
    assert kept(log_probs(*SHUFFLED), SamplingParams(top_p=top_p)) == expected


def test_top_p_stops_as_soon_as_p_is_reached_exactly() -> None:
    # Four probabilities of exactly 0.25: two of them reach 0.5, a third is not needed.
    assert len(kept(torch.zeros(1, 4), SamplingParams(top_p=0.5))) == 2


@pytest.mark.parametrize("min_p, expected", [
    (0.0, {0, 1, 2, 3}),
    (0.25, {1, 3, 0}),  # threshold 0.125: drops 0.05
    (0.5, {1, 3}),      # threshold 0.25
    (0.7, {1}),         # threshold 0.35
    (1.0, {1}),         # the top token always survives
])
def test_min_p_is_relative_to_the_top_probability(min_p: float, expected: set[int]) -> None:
    assert kept(log_probs(*SHUFFLED), SamplingParams(min_p=min_p)) == expected


def test_filters_apply_after_temperature() -> None:
    # Temperature 0.5 squares the probabilities: 0.25, 0.09, 0.0225, 0.0025 (normalised by 0.365):
    # 0.685, 0.247, 0.062, 0.007, so top_p 0.9 keeps two tokens instead of three.
    probs = (0.5, 0.3, 0.15, 0.05)
    assert kept(log_probs(*probs), SamplingParams(top_p=0.9)) == {0, 1, 2}
    assert kept(log_probs(*probs), SamplingParams(top_p=0.9, temperature=0.5)) == {0, 1}


def test_top_k_then_top_p_renormalises() -> None:
    # top_k 2 leaves 0.5 and 0.3 -> 0.625 and 0.375; top_p 0.6 then keeps only the first.
    assert kept(log_probs(0.5, 0.3, 0.15, 0.05), SamplingParams(top_k=2, top_p=0.6)) == {0}


def test_rows_keep_their_own_filters() -> None:
    logits = log_probs(*SHUFFLED).repeat(3, 1)
    rows = [make_row(SamplingParams(top_k=1)), make_row(GREEDY), make_row(SamplingParams(top_p=0.79))]
    out = transform_logits(logits, rows)
    finite = [{i for i, v in enumerate(r) if v != NEG_INF} for r in out.tolist()]
    assert finite == [{1}, {0, 1, 2, 3}, {1, 3}]


# -- penalties, bias, min_tokens -----------------------------------------------------


def penalised(params: SamplingParams, prompt: Sequence[int] = (), output: Sequence[int] = (),
              stop_ids: frozenset[int] = frozenset()) -> list[float]:
    """Greedy rows get penalties, bias and min_tokens only, so the values can be read directly."""
    logits = logits_of(2.0, -2.0, 1.0, -1.0, 0.5)
    return transform_logits(logits, [make_row(params, prompt, output, stop_ids)])[0].tolist()


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    # 0 seen in the prompt, 1 in the output, 2 in both (penalised once); 3 and 4 unseen.
    assert penalised(params, prompt=[0, 2], output=[1, 2, 2]) == [1.0, -4.0, 0.5, -1.0, 0.5]


def test_presence_and_frequency_penalties_count_output_tokens_only() -> None:
    params = SamplingParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)
    # 2 appears twice: 1.0 - (0.5 + 2 * 0.25); 3 once: -1.0 - (0.5 + 0.25); 0 only in the prompt.
    assert penalised(params, prompt=[0, 0], output=[2, 3, 2]) == [2.0, -2.0, 0.0, -1.75, 0.5]


def test_negative_presence_penalty_encourages_repetition() -> None:
    params = SamplingParams(temperature=0.0, presence_penalty=-2.0)
    assert penalised(params, output=[4]) == [2.0, -2.0, 1.0, -1.0, 2.5]


def test_logit_bias_is_added() -> None:
    params = SamplingParams(temperature=0.0, logit_bias={1: 5.0, 4: -100.0})
    assert penalised(params) == [2.0, 3.0, 1.0, -1.0, -99.5]


def test_min_tokens_masks_stop_ids_until_reached() -> None:
    params = SamplingParams(temperature=0.0, min_tokens=2)
    stop_ids = frozenset({0, 3})
    assert penalised(params, output=[1], stop_ids=stop_ids) == [NEG_INF, -2.0, 1.0, NEG_INF, 0.5]
    assert penalised(params, output=[1, 1], stop_ids=stop_ids) == [2.0, -2.0, 1.0, -1.0, 0.5]
    [token] = sample(logits_of(2.0, -2.0, 1.0, -1.0, 0.5), [make_row(params, output=[4], stop_ids=stop_ids)])
    assert token.token_id == 2  # EOS (0) has the best logit but is masked


def test_min_tokens_masks_stop_ids_for_sampled_rows_too() -> None:
    params = SamplingParams(min_tokens=1)
    rows = [make_row(params, stop_ids=frozenset({0}), generator=torch.Generator().manual_seed(i)) for i in range(50)]
    tokens = sample(log_probs(0.97, 0.01, 0.01, 0.01).repeat(50, 1), rows)
    assert all(t.token_id != 0 for t in tokens)


# -- randomness --------------------------------------------------------------------


def test_seeded_row_is_reproducible_whatever_the_batch() -> None:
    uniform = torch.zeros(1, 50)  # any difference in the noise changes the token
    params = SamplingParams(seed=1234)
    alone_row = make_row(params, generator=torch.Generator().manual_seed(1234))
    alone = [sample(uniform, [alone_row])[0].token_id for _ in range(20)]
    assert len(set(alone)) > 5  # the draws really are random

    torch.manual_seed(99)
    seeded = make_row(params, generator=torch.Generator().manual_seed(1234))
    others = [
        make_row(SamplingParams()),  # unseeded: the global generator
        make_row(SamplingParams(top_k=3), generator=torch.Generator().manual_seed(7)),
        make_row(GREEDY),
        make_row(SamplingParams(temperature=0.3, seed=5), generator=torch.Generator().manual_seed(5)),
    ]
    together = []
    for step in range(20):
        before, after = others[:step % 3], others[step % 3:step % 5]  # the batch changes every step
        logits = torch.cat([torch.randn(len(before), 50), uniform, torch.randn(len(after), 50)])
        together.append(sample(logits, before + [seeded] + after)[len(before)].token_id)
    assert together == alone


def test_different_seeds_give_different_draws() -> None:
    uniform = torch.zeros(1, 50)
    first, second = (make_row(SamplingParams(), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    assert [sample(uniform, [first])[0].token_id for _ in range(20)] != [
        sample(uniform, [second])[0].token_id for _ in range(20)]


TARGET = [0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02]
NUM_DRAWS = 20_000
SIGNIFICANCE = 0.001


def sampled_counts(logits: torch.Tensor, params: SamplingParams, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    rows = [make_row(params, generator=generator)] * NUM_DRAWS
    counts = [0] * logits.shape[1]
    for token in sample(logits.repeat(NUM_DRAWS, 1), rows):
        counts[token.token_id] += 1
    return counts


def test_sampling_matches_the_distribution_chi_square() -> None:
    counts = sampled_counts(log_probs(*TARGET), SamplingParams(temperature=1.0), seed=0)
    expected = [p * NUM_DRAWS for p in TARGET]
    assert chisquare(counts, expected).pvalue > SIGNIFICANCE
    # The same test has power: a distribution with two probabilities swapped is rejected.
    wrong = [0.2, 0.3] + TARGET[2:]
    assert chisquare(counts, [p * NUM_DRAWS for p in wrong]).pvalue < SIGNIFICANCE
    slightly_wrong = [0.28, 0.22] + TARGET[2:]
    assert chisquare(counts, [p * NUM_DRAWS for p in slightly_wrong]).pvalue < SIGNIFICANCE


def test_temperature_sharpens_the_distribution_chi_square() -> None:
    # Temperature 0.5 samples proportionally to p^2.
    counts = sampled_counts(log_probs(*TARGET), SamplingParams(temperature=0.5), seed=1)
    squares = [p * p for p in TARGET]
    expected = [s / sum(squares) * NUM_DRAWS for s in squares]
    assert chisquare(counts, expected).pvalue > SIGNIFICANCE
    assert chisquare(counts, [p * NUM_DRAWS for p in TARGET]).pvalue < SIGNIFICANCE


# -- logprobs ----------------------------------------------------------------------


def raw_log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    log_total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_total for v in values]


def test_logprobs_are_of_the_raw_logits() -> None:
    raw = [1.0, 4.0, 2.5, -1.0, 3.0, 0.0]
    # Penalties, bias and temperature change the sampling distribution, not the reported logprobs.
    params = SamplingParams(temperature=0.7, repetition_penalty=1.5, logit_bias={0: 2.0}, logprobs=3, top_k=4)
    rows = [make_row(params, prompt=[1, 4], generator=torch.Generator().manual_seed(5)) for _ in range(30)]
    expected = raw_log_softmax(raw)
    for token in sample(torch.tensor([raw] * 30), rows):
        assert token.logprob == pytest.approx(expected[token.token_id], abs=1e-5)
        assert list(token.top_logprobs) == [1, 4, 2]  # the 3 best raw ids, best first
        assert list(token.top_logprobs.values()) == pytest.approx([expected[1], expected[4], expected[2]], abs=1e-5)


@pytest.mark.parametrize("count", [0, 1, 6])
def test_top_logprobs_has_exactly_n_entries_sorted(count: int) -> None:
    raw = [0.3, -1.2, 2.2, 0.9, 1.7, -0.4]
    [token] = sample(torch.tensor([raw]), [make_row(SamplingParams(temperature=0.0, logprobs=count))])
    assert token.token_id == 2
    assert token.logprob == pytest.approx(raw_log_softmax(raw)[2], abs=1e-6)
    assert len(token.top_logprobs) == count
    values = list(token.top_logprobs.values())
    assert values == sorted(values, reverse=True)
    assert list(token.top_logprobs) == [2, 4, 3, 0, 5, 1][:count]


def test_rows_without_logprobs_report_none() -> None:
    rows = [make_row(SamplingParams(temperature=0.0)), make_row(SamplingParams(temperature=0.0, logprobs=2))]
    plain, with_logprobs = sample(logits_of(0.0, 1.0, 2.0).repeat(2, 1), rows)
    assert plain.logprob is None and plain.top_logprobs is None
    assert with_logprobs.logprob is not None and len(with_logprobs.top_logprobs) == 2


# -- SamplingParams validation --------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    (dict(n=0), "n"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(min_tokens=-1), "min_tokens"),
    (dict(min_tokens=5, max_tokens=4), "min_tokens"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=float("inf")), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(presence_penalty=float("nan")), "presence_penalty"),
    (dict(frequency_penalty=-2.01), "frequency_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(logit_bias={1: float("inf")}), "logit_bias"),
    (dict(logprobs=21), "logprobs"),
    (dict(logprobs=-1), "logprobs"),
    (dict(prompt_logprobs=21), "prompt_logprobs"),
    (dict(stop=["end", ""]), "stop"),
    (dict(stop=""), "stop"),
    (dict(seed=2**64), "seed"),
    (dict(seed=-(2**63) - 1), "seed"),
])
def test_bad_field_is_named(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0), dict(top_p=1.0), dict(min_p=1.0), dict(presence_penalty=-2.0),
    dict(frequency_penalty=2.0), dict(logprobs=20), dict(prompt_logprobs=0), dict(min_tokens=4, max_tokens=4),
    dict(max_tokens=None, min_tokens=100), dict(stop="end"),
])
def test_boundary_values_are_accepted(kwargs: dict) -> None:
    SamplingParams(**kwargs)


@pytest.mark.parametrize("seed", [-(2**63), 0, 2**63 - 1])
def test_every_accepted_seed_can_seed_a_generator(seed: int) -> None:
    params = SamplingParams(seed=seed, n=16)
    for index in range(params.n):  # each of the n completions is seeded with seed + index
        torch.Generator().manual_seed(params.seed + index)


def test_single_stop_string_becomes_a_tuple() -> None:
    assert SamplingParams(stop="end").stop == ("end",)


@pytest.mark.parametrize("kwargs, field", [
    (dict(logit_bias={10: 1.0}), "logit_bias"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"),
    (dict(stop_token_ids=[3, 10]), "stop_token_ids"),
    (dict(stop_token_ids=[-2]), "stop_token_ids"),
])
def test_token_ids_outside_the_vocabulary_are_refused(kwargs: dict, field: str) -> None:
    params = SamplingParams(**kwargs)
    with pytest.raises(ValueError, match=rf"^{field}: .*outside the vocabulary \[0, 10\)"):
        params.check_token_ids(10)


def test_token_ids_inside_the_vocabulary_pass() -> None:
    SamplingParams(logit_bias={0: 1.0, 9: -1.0}, stop_token_ids=[0, 9]).check_token_ids(10)
