"""Scheduling ahead (`async_scheduling=True`): each step is scheduled and
launched before the previous step's tokens are read back, its in-flight
tokens fed from the previous step's choices on the device. On CPU the
device work is synchronous, so this checks correctness, not overlap: the
tokens, texts and finish reasons must be exactly those of scheduling after
the results, and every block must come back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helix import LLM, SamplingParams
from helix.outputs import RequestOutput
from helix.scheduler.speculation import StepPlan
from tests.regimes import REGIMES, assert_drained, greedy_rerun_count, run_regime


def count_ahead_schedules(llm: LLM) -> list[int]:
    """Wrap the engine's scheduler so that [0] counts the steps scheduled ahead of results."""
    scheduler, counter = llm.engine.scheduler, [0]
    schedule = scheduler.schedule

    def counting(in_flight: Any = None) -> Any:
        counter[0] += in_flight is not None
        return schedule(in_flight=in_flight)

    scheduler.schedule = counting
    return counter


def generate_both_ways(model_dir: Path, prompts: list[Any], params: Any,
                       **options: Any) -> tuple[list[RequestOutput], list[RequestOutput], int]:
    """(outputs scheduled after results, outputs scheduled ahead, steps scheduled ahead)."""
    results = []
    for async_scheduling in (False, True):
        llm = LLM(str(model_dir), async_scheduling=async_scheduling, check_invariants=True, **options)
        ahead = count_ahead_schedules(llm)
        results.append(llm.generate(prompts, params, use_tqdm=False))
        assert_drained(llm)
    return results[0], results[1], ahead[0]


def completions(outputs: list[RequestOutput]) -> list[tuple[str, tuple[int, ...], str | None]]:
    return [(c.text, tuple(c.token_ids), c.finish_reason) for o in outputs for c in o.outputs]


def assert_same_logprobs(actual: list[Any], expected: list[Any]) -> None:
    assert [e.token_id for e in actual] == [e.token_id for e in expected]
    assert [e.logprob for e in actual] == pytest.approx([e.logprob for e in expected], abs=1e-5)
    assert [sorted(e.top) for e in actual] == [sorted(e.top) for e in expected]


def test_engine_resolves_async_scheduling_per_device(tiny_model_dirs: dict[str, Path]) -> None:
    assert LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=64).engine.async_scheduling is False  # CPU default
    assert LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=64, async_scheduling=True).engine.async_scheduling


@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_equals_transformers_scheduled_ahead(regime: str, tiny_model_dirs: dict[str, Path],
                                                    greedy_prompts: list[list[int]],
                                                    greedy_expected: list[list[int]]) -> None:
    llm = run_regime(regime, tiny_model_dirs["llama"], greedy_prompts, greedy_expected, async_scheduling=True)
    if regime != "aborts":  # run_regime builds the engine; count on a second, identical run
        assert greedy_rerun_count(llm, count_ahead_schedules, greedy_prompts, greedy_expected) > 0


def test_stop_tokens_end_requests_as_without_scheduling_ahead(tiny_model_dirs: dict[str, Path],
                                                              greedy_prompts: list[list[int]],
                                                              greedy_expected: list[list[int]]) -> None:
    # Each prompt's 6th greedy token stops it: the position launched ahead of that
    # result must be dropped, not emitted.
    stop_ids = sorted({tokens[5] for tokens in greedy_expected[:8]})
    params = SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=stop_ids)
    plain, ahead, num_ahead = generate_both_ways(tiny_model_dirs["llama"], greedy_prompts, params,
                                                 num_kv_blocks=256, block_size=4)
    assert completions(ahead) == completions(plain)
    assert sum(o.outputs[0].finish_reason == "stop" for o in ahead) >= 8
    assert num_ahead > 0


def stop_string_requests() -> tuple[list[str], list[SamplingParams]]:
    """Text prompts with seeded top-k/top-p sampling, stop strings that end most of
    them early, and logprobs."""
    prompts = ["the quick brown fox", "a b c", "hello there", "once upon a time"] * 3
    return prompts, [SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=24, seed=100 + i,
                                    stop=["e", "a "], logprobs=2) for i in range(len(prompts))]


def test_stop_strings_and_seeded_sampling_match(tiny_model_dirs: dict[str, Path]) -> None:
    prompts, params = stop_string_requests()
    plain, ahead, num_ahead = generate_both_ways(tiny_model_dirs["llama"], prompts, params,
                                                 num_kv_blocks=128, block_size=4)
    assert completions(ahead) == completions(plain)
    for ahead_output, plain_output in zip(ahead, plain):
        # Batches differ (a stopped request's dropped position), so logits may differ in the last bits.
        assert_same_logprobs(ahead_output.outputs[0].logprobs, plain_output.outputs[0].logprobs)
    assert num_ahead > 0


def test_samplers_that_read_the_output_wait_for_results(tiny_model_dirs: dict[str, Path],
                                                        greedy_prompts: list[list[int]]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, presence_penalty=1.5, repetition_penalty=1.3,
                            min_tokens=4, ignore_eos=True)
    plain, ahead, num_ahead = generate_both_ways(tiny_model_dirs["llama"], greedy_prompts[:6], params,
                                                 num_kv_blocks=128, block_size=4)
    assert completions(ahead) == completions(plain)
    assert num_ahead == 0


def test_prompt_logprobs_and_n_match(tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]]) -> None:
    params = SamplingParams(temperature=0.7, max_tokens=8, n=3, seed=5, prompt_logprobs=1)
    plain, ahead, num_ahead = generate_both_ways(tiny_model_dirs["llama"], greedy_prompts[:6], params,
                                                 num_kv_blocks=256, block_size=4, max_num_batched_tokens=16)
    assert completions(ahead) == completions(plain)
    for ahead_output, plain_output in zip(ahead, plain):
        assert ahead_output.prompt_logprobs[0] is None and plain_output.prompt_logprobs[0] is None
        assert_same_logprobs(ahead_output.prompt_logprobs[1:], plain_output.prompt_logprobs[1:])
    assert num_ahead > 0


def test_speculation_schedules_after_results(tiny_model_dirs: dict[str, Path],
                                             greedy_prompts: list[list[int]],
                                             greedy_expected: list[list[int]]) -> None:
    """Every step drafts (fixed K): the next step depends on how many drafts were
    accepted, so none is scheduled ahead."""
    llm = LLM(str(tiny_model_dirs["llama"]), draft_model=str(tiny_model_dirs["llama"]), num_kv_blocks=256,
              block_size=4, async_scheduling=True, speculation_mode="fixed", check_invariants=True)
    ahead = count_ahead_schedules(llm)
    params = SamplingParams(temperature=0.0, max_tokens=len(greedy_expected[0]), ignore_eos=True)
    outputs = llm.generate(greedy_prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == greedy_expected
    assert ahead[0] == 0
    assert_drained(llm)


def test_steps_without_drafts_are_scheduled_ahead(tiny_model_dirs: dict[str, Path],
                                                  greedy_prompts: list[list[int]],
                                                  greedy_expected: list[list[int]]) -> None:
    """Where adaptive speculation measures plain decoding faster, its steps give no
    drafts and are scheduled ahead; where it measures speculation faster (here a
    lone request), drafts come back, the draft model catching up."""
    llm = LLM(str(tiny_model_dirs["llama"]), draft_model=str(tiny_model_dirs["llama"]), num_kv_blocks=512,
              block_size=4, async_scheduling=True, check_invariants=True)
    speculation = llm.engine.scheduler.speculation
    k_max = speculation.config.num_speculative_tokens
    for num_decoding in (1, 2, 4, 8, 16, 32, 64):
        for k in range(k_max + 1):
            fast = (k == k_max) if num_decoding == 1 else (k == 0)
            speculation.observe_step(StepPlan(num_decoding, k), 1e-3 if fast else 1e3)
    ahead = count_ahead_schedules(llm)
    # The first request outlives the others, and runs alone for its last tokens.
    params = [SamplingParams(temperature=0.0, max_tokens=len(greedy_expected[0]) if i == 0 else 4, ignore_eos=True)
              for i in range(len(greedy_prompts))]
    outputs = llm.generate(greedy_prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [tokens[:p.max_tokens]
                                                         for tokens, p in zip(greedy_expected, params)]
    assert ahead[0] > 0
    assert llm.stats()["spec_draft_tokens"] > 0
    assert_drained(llm)


def test_a_lone_request_speculates_from_its_first_decode_step(tiny_model_dirs: dict[str, Path],
                                                              greedy_prompts: list[list[int]],
                                                              greedy_expected: list[list[int]]) -> None:
    """Where adaptive speculation measures drafting faster, the step after a
    prompt waits for the prompt's token and drafts, as every later step does:
    none is scheduled ahead, not even that one."""
    llm = LLM(str(tiny_model_dirs["llama"]), draft_model=str(tiny_model_dirs["llama"]), num_kv_blocks=256,
              block_size=4, async_scheduling=True, check_invariants=True)
    speculation = llm.engine.scheduler.speculation
    k_max = speculation.config.num_speculative_tokens
    for k in range(k_max + 1):
        speculation.observe_step(StepPlan(1, k), 1e-3 if k == k_max else 1e3)
    ahead = count_ahead_schedules(llm)
    params = SamplingParams(temperature=0.0, max_tokens=len(greedy_expected[0]), ignore_eos=True)
    outputs = llm.generate(greedy_prompts[:1], params, use_tqdm=False)
    assert outputs[0].outputs[0].token_ids == greedy_expected[0]
    assert ahead[0] == 0
    assert_drained(llm)
