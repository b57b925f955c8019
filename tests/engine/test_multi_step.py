"""Multi-step decoding through the engine (`num_scheduler_steps` > 1): each of
a multi-step's forwards is fed the tokens the one before chose on the device,
and the host reads them all at the end. Tokens, texts, logprobs and finish
reasons must be exactly those of single steps (and transformers' greedy
tokens), with every block back in the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helix import LLM, SamplingParams
from helix.engine_args import EngineArgs
from helix.outputs import RequestOutput
from helix.scheduler.outputs import SchedulerOutput
from tests.engine.test_async_scheduling import assert_same_logprobs, completions, stop_string_requests
from tests.regimes import REGIMES, assert_drained, greedy_rerun_count, run_regime


def count_multi_steps(llm: LLM) -> list[int]:
    """Wrap the engine's runner so that [0] counts the launched steps that decode several tokens."""
    runner, counter = llm.engine.runner, [0]
    launch = runner.launch

    def counting(step: SchedulerOutput) -> Any:
        counter[0] += any(item.num_steps > 1 for item in step.scheduled)
        return launch(step)

    runner.launch = counting
    return counter


def generate(model_dir: Path, prompts: list[Any], params: Any, num_scheduler_steps: int,
             **options: Any) -> tuple[list[RequestOutput], int]:
    """(outputs, multi-steps launched), with the engine drained afterwards."""
    llm = LLM(str(model_dir), num_scheduler_steps=num_scheduler_steps, check_invariants=True, **options)
    multi = count_multi_steps(llm)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert_drained(llm)
    return outputs, multi[0]


@pytest.mark.parametrize("async_scheduling", [False, True])
@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_equals_transformers_in_multi_steps(regime: str, async_scheduling: bool,
                                                   tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]],
                                                   greedy_expected: list[list[int]]) -> None:
    llm = run_regime(regime, tiny_model_dirs["llama"], greedy_prompts, greedy_expected, num_scheduler_steps=4,
                     async_scheduling=async_scheduling)
    if regime != "aborts":  # run_regime builds the engine; count on a second, identical run
        assert greedy_rerun_count(llm, count_multi_steps, greedy_prompts, greedy_expected) > 0


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_stop_tokens_inside_a_multi_step_end_requests_there(async_scheduling: bool, tiny_model_dirs: dict[str, Path],
                                                            greedy_prompts: list[list[int]],
                                                            greedy_expected: list[list[int]]) -> None:
    # Each of eight prompts stops at its 6th greedy token, inside a multi-step of 8:
    # the tokens decoded after it are dropped.
    stop_ids = sorted({tokens[5] for tokens in greedy_expected[:8]})
    params = SamplingParams(temperature=0.0, max_tokens=20, stop_token_ids=stop_ids)
    options = dict(num_kv_blocks=256, block_size=4, async_scheduling=async_scheduling)
    single, _ = generate(tiny_model_dirs["llama"], greedy_prompts, params, 1, **options)
    multi, num_multi = generate(tiny_model_dirs["llama"], greedy_prompts, params, 8, **options)
    assert completions(multi) == completions(single)
    assert sum(o.outputs[0].finish_reason == "stop" for o in multi) >= 8
    assert num_multi > 0


def test_stop_strings_seeds_and_logprobs_match_single_steps(tiny_model_dirs: dict[str, Path]) -> None:
    prompts, params = stop_string_requests()
    options = dict(num_kv_blocks=128, block_size=4, async_scheduling=True)
    single, _ = generate(tiny_model_dirs["llama"], prompts, params, 1, **options)
    multi, num_multi = generate(tiny_model_dirs["llama"], prompts, params, 5, **options)
    assert completions(multi) == completions(single)
    for multi_output, single_output in zip(multi, single):
        assert_same_logprobs(multi_output.outputs[0].logprobs, single_output.outputs[0].logprobs)
    assert num_multi > 0


def test_max_tokens_cuts_multi_steps(tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]]) -> None:
    # max_tokens 1..9 against multi-steps of 4: requests end inside multi-steps.
    params = [SamplingParams(temperature=0.0, max_tokens=1 + i % 9, ignore_eos=True) for i in range(16)]
    prompts = greedy_prompts[:16]
    single, _ = generate(tiny_model_dirs["llama"], prompts, params, 1, num_kv_blocks=256, block_size=4)
    multi, num_multi = generate(tiny_model_dirs["llama"], prompts, params, 4, num_kv_blocks=256, block_size=4)
    assert completions(multi) == completions(single)
    assert [len(o.outputs[0].token_ids) for o in multi] == [1 + i % 9 for i in range(16)]
    assert num_multi > 0


def test_samplers_that_read_the_output_run_single_steps(tiny_model_dirs: dict[str, Path],
                                                        greedy_prompts: list[list[int]]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, presence_penalty=1.5, repetition_penalty=1.3,
                            min_tokens=4, ignore_eos=True)
    single, _ = generate(tiny_model_dirs["llama"], greedy_prompts[:6], params, 1, num_kv_blocks=128, block_size=4)
    multi, num_multi = generate(tiny_model_dirs["llama"], greedy_prompts[:6], params, 8, num_kv_blocks=128,
                                block_size=4)
    assert completions(multi) == completions(single)
    assert num_multi == 0


def test_speculative_engine_runs_multi_steps_when_it_drafts_nothing(tiny_model_dirs: dict[str, Path],
                                                                    unrelated_draft_dir: Path,
                                                                    greedy_prompts: list[list[int]],
                                                                    greedy_expected: list[list[int]]) -> None:
    # An unrelated draft is rarely accepted, so the adaptive policy turns drafting
    # off, and those steps decode several tokens; the output is still the target's.
    params = SamplingParams(temperature=0.0, max_tokens=len(greedy_expected[0]), ignore_eos=True)
    outputs, num_multi = generate(tiny_model_dirs["llama"], greedy_prompts, params, 4,
                                  draft_model=str(unrelated_draft_dir), num_kv_blocks=512, block_size=4,
                                  async_scheduling=True)
    assert [o.outputs[0].token_ids for o in outputs] == greedy_expected
    assert num_multi > 0


def test_num_scheduler_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="num_scheduler_steps"):
        EngineArgs(num_scheduler_steps=0)
