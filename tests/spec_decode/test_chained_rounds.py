"""Speculative rounds chained on the device (`num_scheduler_steps` > 1 with a
draft model): each round starts where the round before stopped, which only
the device knows, and the host reads every round at the end. Greedy output
must stay exactly transformers' in every engine regime, whatever each round
keeps, with every block back in the pool."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix import LLM, SamplingParams
from helix.scheduler.outputs import SchedulerOutput
from helix.worker.spec_decode.round_kernels import finish_round, packed_verdict, span_inputs
from helix.worker.spec_decode.rounds import ChainedVerdicts, RoundInputs
from helix.worker.spec_decode.synthetic import SyntheticAcceptance
from tests.engine.test_async_scheduling import completions
from tests.reference import hf_greedy
from tests.regimes import REGIMES, assert_drained, greedy_rerun_count, run_regime

K = 3


def count_chained(llm: LLM) -> list[int]:
    """Wrap the engine's runner so that [0] counts launched steps of chained rounds."""
    runner, counter = llm.engine.runner, [0]
    launch = runner.launch

    def counting(step: SchedulerOutput) -> Any:
        counter[0] += any(item.num_steps > 1 and item.num_spec_tokens for item in step.scheduled)
        return launch(step)

    runner.launch = counting
    return counter


def spec_options(draft: Path, **options: Any) -> dict[str, Any]:
    return dict(draft_model=str(draft), num_speculative_tokens=K, speculation_mode="fixed", num_scheduler_steps=4,
                **options)


@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_equals_transformers_with_a_draft_right_half_the_time(
        regime: str, tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]],
        greedy_expected: list[list[int]]) -> None:
    # The draft is the target, so every draft is the greedy token; the coin still
    # rejects half of them, and a rejected row emits the target's argmax: the same
    # token. So rounds keep 0..K drafts at random while the output stays greedy.
    target = tiny_model_dirs["llama"]
    llm = run_regime(regime, target, greedy_prompts, greedy_expected,
                     **spec_options(target, spec_synthetic_acceptance=0.5))
    stats = llm.stats()
    assert 0.4 < stats["acceptance_rate_position_0"] < 0.6  # the first draft of a round: the coin alone
    if regime != "aborts":  # run_regime builds the engine; count on a second, identical run
        assert greedy_rerun_count(llm, count_chained, greedy_prompts, greedy_expected) > 0


@pytest.mark.parametrize("draft", ["target", "unrelated"])
def test_greedy_equals_transformers_with_real_verdicts(draft: str, tiny_model_dirs: dict[str, Path],
                                                       unrelated_draft_dir: Path, greedy_prompts: list[list[int]],
                                                       greedy_expected: list[list[int]]) -> None:
    target = tiny_model_dirs["llama"]
    draft_dir = target if draft == "target" else unrelated_draft_dir
    llm = run_regime("ample", target, greedy_prompts, greedy_expected, **spec_options(draft_dir))
    rate = llm.stats()["acceptance_rate"]
    assert rate == 1.0 if draft == "target" else rate < 0.3
    assert greedy_rerun_count(llm, count_chained, greedy_prompts, greedy_expected) > 0


def generate(model_dir: Path, prompts: list[list[int]], params: Any, **options: Any) -> tuple[list[Any], int]:
    llm = LLM(str(model_dir), check_invariants=True, num_kv_blocks=256, block_size=4, **options)
    chained = count_chained(llm)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert_drained(llm)
    return outputs, chained[0]


@pytest.mark.parametrize("max_tokens", [7, 20])
def test_stop_tokens_and_max_tokens_inside_chained_rounds(max_tokens: int, tiny_model_dirs: dict[str, Path],
                                                          greedy_prompts: list[list[int]],
                                                          greedy_expected: list[list[int]]) -> None:
    # Half the prompts stop at their 6th greedy token, the rest run to max_tokens:
    # both end requests inside a chain of rounds, whose later tokens are dropped.
    target = tiny_model_dirs["llama"]
    stop_ids = sorted({tokens[5] for tokens in greedy_expected[:8]})
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, stop_token_ids=stop_ids)
    prompts = greedy_prompts[:16]
    plain, _ = generate(target, prompts, params)
    chained, num_chained = generate(target, prompts, params, **spec_options(target, spec_synthetic_acceptance=0.6))
    assert completions(chained) == completions(plain)
    assert sum(o.outputs[0].finish_reason == "stop" for o in chained) >= 8
    assert sum(o.outputs[0].finish_reason == "length" for o in chained) > 0
    assert num_chained > 0


def test_chained_steps_launch_no_rounds_past_what_a_request_is_expected_to_need(
        tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]]) -> None:
    """A round past a request's last token runs all the same on the device, so a
    chained step takes no more rounds than the request's acceptance says it
    needs. With the target as its own draft every round emits K + 1 = 4 tokens:
    of the 26 after the prefill's, the first step's 4 rounds (num_scheduler_steps)
    emit 16, and the 10 left take 3 rounds, not the 4 that max_tokens allows."""
    target = tiny_model_dirs["llama"]
    llm = LLM(str(target), check_invariants=True, num_kv_blocks=256, block_size=4, **spec_options(target))
    rounds: list[int] = []
    launch = llm.engine.runner.launch

    def recording(step: SchedulerOutput) -> Any:
        rounds.extend(item.num_steps for item in step.scheduled if item.num_spec_tokens)
        return launch(step)

    llm.engine.runner.launch = recording
    params = SamplingParams(temperature=0.0, max_tokens=27, ignore_eos=True)
    outputs = llm.generate(greedy_prompts[:1], params, use_tqdm=False)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    assert outputs[0].outputs[0].token_ids == hf_greedy(model, greedy_prompts[0], 27)
    assert_drained(llm)
    assert rounds == [4, 3]


def test_a_batch_chains_the_rounds_its_neediest_request_is_expected_to_need(
        tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]],
        greedy_expected: list[list[int]]) -> None:
    """Requests of a chained step advance in lockstep, so the step takes the rounds
    the request with the most tokens left is expected to need, within what the
    one with the fewest allows (a token a round). After the prefill, 12 and 7
    tokens are left; at the prior acceptance (a = 0.75 before any verify) a
    round of K = 3 emits E = 1 + a + a^2 + a^3 = 2.73 tokens, so the first
    request is expected to need 5 rounds and the second 3: the step takes 5,
    not the 7 its shorter request allows nor the 8 of num_scheduler_steps."""
    target = tiny_model_dirs["llama"]
    llm = LLM(str(target), check_invariants=True, num_kv_blocks=256, block_size=4, draft_model=str(target),
              num_speculative_tokens=K, speculation_mode="fixed", num_scheduler_steps=8)
    rounds: list[int] = []
    launch = llm.engine.runner.launch

    def recording(step: SchedulerOutput) -> Any:
        rounds.extend(item.num_steps for item in step.scheduled[:1] if item.num_spec_tokens)
        return launch(step)

    llm.engine.runner.launch = recording
    lengths = [13, 8]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in lengths]
    outputs = llm.generate(greedy_prompts[:2], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [greedy_expected[i][:n] for i, n in enumerate(lengths)]
    assert_drained(llm)
    assert rounds[0] == 5


def test_rounds_after_a_stop_token_are_counted_past_the_stop(tiny_model_dirs: dict[str, Path],
                                                              greedy_prompts: list[list[int]],
                                                              greedy_expected: list[list[int]]) -> None:
    """With the target as its own draft every round emits K + 1 = 4 tokens, so a
    step of 4 chained rounds emits output tokens 1-4, 5-8, 9-12 and 13-16 (the
    prefill gave token 0). A stop token first seen at index s ends the request
    in round ceil(s / 4); the step's later rounds ran past the stop."""
    target = tiny_model_dirs["llama"]
    expected = greedy_expected[0]
    stop_at = next(i for i in range(1, 17) if expected[i] not in expected[:i])
    llm = LLM(str(target), check_invariants=True, num_kv_blocks=256, block_size=4, **spec_options(target))
    params = SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=[expected[stop_at]])
    outputs = llm.generate(greedy_prompts[:1], params, use_tqdm=False)
    assert outputs[0].outputs[0].token_ids == expected[:stop_at + 1]
    assert_drained(llm)
    assert llm.stats()["spec_rounds_past_stop"] == 4 - -(-stop_at // 4)


def test_logprobs_and_sampled_requests_are_not_chained(tiny_model_dirs: dict[str, Path],
                                                       greedy_prompts: list[list[int]]) -> None:
    target = tiny_model_dirs["llama"]
    for params in (SamplingParams(temperature=0.0, max_tokens=12, logprobs=2, ignore_eos=True),
                   SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True)):
        _, num_chained = generate(target, greedy_prompts[:4], params, **spec_options(target))
        assert num_chained == 0


def test_a_round_keeps_the_accepted_prefix_and_moves_the_next_inputs() -> None:
    inputs = RoundInputs.first(torch.tensor([40, 41, 42]))
    drafts = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7]])
    best = torch.tensor([[5, 6, 7, 8],    # every draft matches: the bonus token follows
                         [5, 9, 7, 8],    # the second draft misses: the argmax there replaces it
                         [1, 6, 7, 8]])   # the first misses, though later ones match
    kept, next_token, after = inputs.advance(drafts, best, drafts == best[:, :-1])
    assert kept.tolist() == [3, 1, 0]
    assert next_token.tolist() == [8, 9, 1]
    assert after.last.tolist() == [8, 9, 1]
    assert after.before_last.tolist() == [7, 5, 42]  # the last kept draft, else the round's own first token
    assert after.shift.by.tolist() == [3, 1, 0] and after.shift.most == K
    # A benchmark coin overrides the tests: the verdict follows it, not the matches.
    coin = torch.tensor([[True, False, True], [True, True, True], [False, True, True]])
    kept, next_token, again = after.advance(drafts, best, coin)
    assert kept.tolist() == [1, 3, 0] and next_token.tolist() == [6, 8, 1]
    assert again.before_last.tolist() == [5, 7, 1]
    assert again.shift.by.tolist() == [4, 4, 0] and again.shift.most == 2 * K


def test_chained_verdicts_emit_each_rounds_kept_drafts_then_its_next_token() -> None:
    first = packed_verdict(torch.tensor([[5, 6, 7], [1, 2, 3]]), torch.tensor([2, 3]), torch.tensor([9, 4]))
    second = packed_verdict(torch.tensor([[10, 11, 12], [20, 21, 22]]), torch.tensor([0, 1]), torch.tensor([3, 8]))
    verdicts = ChainedVerdicts.of([first.unsqueeze(0), second.unsqueeze(0)])
    assert verdicts.per_request() == [([5, 6, 9, 3], [2, 0]), ([1, 2, 3, 4, 20, 8], [3, 1])]


def test_span_inputs_place_each_row_from_its_start_and_padding_nowhere() -> None:
    """A graphed round's pass inputs: rows start at 5 and 9 (block size 4, tables
    of blocks 100.. and 110..), a padding row at 1 reads and writes nothing."""
    start, live = torch.tensor([5, 9, 1]), torch.tensor([1, 1, 0])
    tables = torch.tensor([[100, 101, 102], [110, 111, 112], [0, 0, 0]], dtype=torch.int32)
    positions, slots, seq_lens = span_inputs(start, live, tables, -1, 2, 4)
    assert positions.tolist() == [[4, 5], [8, 9], [0, 1]]
    assert slots.tolist() == [[101 * 4, 101 * 4 + 1], [112 * 4, 112 * 4 + 1], [-1, -1]]
    assert seq_lens.tolist() == [6, 10, 0] and seq_lens.dtype == torch.int32


def test_finish_round_writes_the_verdict_row_and_moves_each_row_past_it() -> None:
    drafts = torch.tensor([[11, 12, 13], [21, 22, 23], [0, 0, 0]])
    best = torch.tensor([[11, 18, 13, 14], [27, 0, 0, 0], [5, 5, 5, 5]])
    last, before_last, start = torch.tensor([10, 20, 0]), torch.tensor([9, 19, 0]), torch.tensor([5, 9, 1])
    live, index, verdicts = torch.tensor([1, 1, 0]), torch.tensor([1]), torch.zeros((3, 16), dtype=torch.int64)
    finish_round(drafts == best[:, :-1], drafts, best, last, before_last, start, live, index, verdicts)
    assert verdicts[1, :10].tolist() == [11, 12, 13, 1, 18, 21, 22, 23, 0, 27]
    assert not verdicts[0].any() and not verdicts[2].any()
    assert last.tolist()[:2] == [18, 27] and before_last.tolist()[:2] == [11, 20]
    assert start.tolist() == [7, 10, 1]


@pytest.mark.parametrize("rate", [0.3, 0.7])
def test_the_device_coin_accepts_with_probability_a(rate: float) -> None:
    tests = SyntheticAcceptance(rate, seed=5).coins((4000, K), torch.device("cpu"))
    share = tests.float().mean().item()
    assert abs(share - rate) < 4 * (rate * (1 - rate) / tests.numel()) ** 0.5
    again = SyntheticAcceptance(rate, seed=5).coins((4000, K), torch.device("cpu"))
    assert torch.equal(tests, again)


def test_batches_beyond_max_chained_seqs_verify_one_round(tiny_model_dirs: dict[str, Path],
                                                          greedy_prompts: list[list[int]],
                                                          greedy_expected: list[list[int]]) -> None:
    # On an accelerator the cap is what the verify graphs cover; on the CPU any batch
    # chains, so the cap is set here. Eight requests would chain; five end early,
    # and the last three chain.
    target = tiny_model_dirs["llama"]
    llm = LLM(str(target), check_invariants=True, num_kv_blocks=256, block_size=4, **spec_options(target))
    scheduler = llm.engine.scheduler
    scheduler.config = replace(scheduler.config, max_chained_seqs=3)
    sizes: list[int] = []
    launch = llm.engine.runner.launch

    def recording(step: SchedulerOutput) -> Any:
        if any(item.num_steps > 1 and item.num_spec_tokens for item in step.scheduled):
            sizes.append(len(step.scheduled))
        return launch(step)

    llm.engine.runner.launch = recording
    lengths = [12] * 5 + [20] * 3
    params = [SamplingParams(temperature=0.0, max_tokens=length, ignore_eos=True) for length in lengths]
    outputs = llm.generate(greedy_prompts[:8], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [greedy_expected[i][:n] for i, n in enumerate(lengths)]
    assert_drained(llm)
    assert sizes and max(sizes) <= 3
