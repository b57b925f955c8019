"""DELTA outputs (`SamplingParams.output_kind`): each holds only what is new since
the previous one, and together they are exactly the CUMULATIVE stream's final
output: for n > 1, with logprobs and stop strings, read promptly or slowly."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from helix import LLM, RequestOutput, RequestOutputKind, SamplingParams
from helix.engine import AsyncEngine

PROMPT = [5, 6, 7, 8]
SAMPLED = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=24, ignore_eos=True, logprobs=2, prompt_logprobs=1)
DELTA = RequestOutputKind.DELTA

Whole = list[tuple[str, list[int], list[int], str | None]]


@pytest.fixture
async def engine(tiny_model_dirs: dict[str, Path]):
    engine = AsyncEngine(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)
    yield engine
    await engine.shutdown()


async def collect(engine: AsyncEngine, params: SamplingParams, read_delay_s: float = 0.0) -> list[RequestOutput]:
    outputs = []
    async for output in engine.generate(PROMPT, params):
        outputs.append(output)
        await asyncio.sleep(read_delay_s)  # the steps run meanwhile; their outputs merge unread
    return outputs


def whole(output: RequestOutput) -> Whole:
    """Per completion: text, token ids, the token ids of its logprobs, finish reason."""
    return [(c.text, c.token_ids, [e.token_id for e in c.logprobs or []], c.finish_reason) for c in output.outputs]


def concatenated(outputs: list[RequestOutput]) -> Whole:
    return [("".join(o.outputs[i].text for o in outputs),
             [t for o in outputs for t in o.outputs[i].token_ids],
             [e.token_id for o in outputs for e in o.outputs[i].logprobs or []],
             outputs[-1].outputs[i].finish_reason) for i in range(len(outputs[-1].outputs))]


def assert_only_new(outputs: list[RequestOutput]) -> None:
    """Every output holds what is new, its logprobs those of its tokens, with running counts."""
    counts = [0] * len(outputs[0].outputs)
    for output in outputs:
        assert output.kind is DELTA
        for completion in output.outputs:
            counts[completion.index] += len(completion.token_ids)
            assert completion.num_generated_tokens == counts[completion.index]
            assert (completion.delta_text, completion.delta_token_ids) == (completion.text, completion.token_ids)
            if completion.logprobs is not None:
                assert [e.token_id for e in completion.logprobs] == completion.token_ids
    assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])


async def assert_delta_equals_cumulative(engine: AsyncEngine, params: SamplingParams,
                                         read_delay_s: float = 0.0) -> list[RequestOutput]:
    cumulative = (await collect(engine, params))[-1]
    deltas = await collect(engine, replace(params, output_kind=DELTA), read_delay_s)
    assert_only_new(deltas)
    assert concatenated(deltas) == whole(cumulative)
    assert deltas[-1].prompt_logprobs == cumulative.prompt_logprobs
    return deltas


@pytest.mark.parametrize("params", [
    SAMPLED,
    replace(SAMPLED, n=1, temperature=0.0, logprobs=None, prompt_logprobs=None),
    replace(SAMPLED, ignore_eos=False, max_tokens=60),
], ids=["n3-logprobs", "greedy", "until-eos"])
async def test_deltas_add_up_to_the_cumulative_output(engine: AsyncEngine, params: SamplingParams) -> None:
    await assert_delta_equals_cumulative(engine, params)


@pytest.mark.parametrize("include_stop", [False, True])
async def test_deltas_add_up_with_stop_strings(engine: AsyncEngine, include_stop: bool) -> None:
    text = (await collect(engine, SAMPLED))[-1].outputs[0].text
    stop = text[5:8]  # longer than one character: the detokenizer holds text back
    assert len(stop) == 3
    params = replace(SAMPLED, stop=(stop, "zzz"), include_stop_str_in_output=include_stop)
    deltas = await assert_delta_equals_cumulative(engine, params)
    assert deltas[-1].outputs[0].finish_reason == "stop"


async def test_unread_deltas_merge_for_a_slow_consumer(engine: AsyncEngine) -> None:
    deltas = await assert_delta_equals_cumulative(engine, SAMPLED, read_delay_s=0.05)
    assert len(deltas) < SAMPLED.max_tokens  # some outputs held several steps' tokens


async def test_offline_generate_returns_whole_outputs_of_either_kind(tiny_model_dirs: dict[str, Path]) -> None:
    llm = LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4)
    (cumulative,) = llm.generate(PROMPT, SAMPLED, use_tqdm=False)
    (delta,) = llm.generate(PROMPT, replace(SAMPLED, output_kind=DELTA), use_tqdm=False)
    assert delta.kind is cumulative.kind is RequestOutputKind.CUMULATIVE
    assert whole(delta) == whole(cumulative) and len(cumulative.outputs[0].token_ids) == SAMPLED.max_tokens


def test_output_kind_is_checked() -> None:
    with pytest.raises(ValueError, match="^output_kind: "):
        SamplingParams(output_kind="delta")  # type: ignore[arg-type]
