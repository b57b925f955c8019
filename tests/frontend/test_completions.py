"""/v1/completions through the official OpenAI client: prompt forms, n, stop,
logprobs, echo, seeds, usage and streaming."""

from __future__ import annotations

import aiohttp
import pytest
from openai import AsyncOpenAI

from helix import SamplingParams
from tests.frontend.conftest import LOOP, MODEL_NAME, Server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=8, extra_body={"ignore_eos": True})


async def tokenize(http: aiohttp.ClientSession, server: Server, text: str) -> list[int]:
    async with http.post(server.url("/tokenize"), json={"prompt": text}) as response:
        return (await response.json())["tokens"]


async def test_each_prompt_form(client: AsyncOpenAI, server: Server, http: aiohttp.ClientSession) -> None:
    text = await client.completions.create(prompt="The quick brown fox", **GREEDY)
    ids = await tokenize(http, server, "The quick brown fox")
    by_ids = await client.completions.create(prompt=ids, **GREEDY)
    assert text.choices[0].text == by_ids.choices[0].text and len(text.choices) == 1
    assert text.usage.prompt_tokens == len(ids)

    texts = await client.completions.create(prompt=["The quick brown fox", "To be, or not"], **GREEDY)
    id_lists = await client.completions.create(prompt=[ids, [5, 6, 7]], **GREEDY)
    assert [c.index for c in texts.choices] == [0, 1] == [c.index for c in id_lists.choices]
    assert texts.choices[0].text == id_lists.choices[0].text == text.choices[0].text
    assert texts.usage.prompt_tokens == len(ids) + len(await tokenize(http, server, "To be, or not"))
    assert id_lists.usage.prompt_tokens == len(ids) + 3


async def test_response_shape_and_usage(client: AsyncOpenAI) -> None:
    response = await client.completions.create(prompt="Paged attention", **GREEDY)
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    assert response.model == MODEL_NAME and response.created > 0
    assert response.choices[0].finish_reason == "length"
    usage = response.usage
    assert usage.completion_tokens == 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_greedy_text_equals_the_engine(client: AsyncOpenAI, server: Server) -> None:
    prompt = [11, 12, 13, 14]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    direct = [o async for o in server.engine.generate(prompt, params)][-1].outputs[0].text
    response = await client.completions.create(prompt=prompt, **GREEDY)
    assert response.choices[0].text == direct


async def test_n_choices_are_indexed_by_prompt_then_sample(client: AsyncOpenAI) -> None:
    response = await client.completions.create(model=MODEL_NAME, prompt=[[1, 2, 3], [4, 5, 6]], n=2,
                                               temperature=1.0, max_tokens=6, seed=3,
                                               extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert response.usage.completion_tokens == 4 * 6
    assert response.usage.prompt_tokens == 6  # each prompt counted once, not per sample
    assert response.choices[0].text != response.choices[1].text


async def test_stop_string_ends_the_text(client: AsyncOpenAI) -> None:
    full = (await client.completions.create(prompt=[21, 22, 23], **{**GREEDY, "max_tokens": 30})).choices[0].text
    stop = full[8:11]
    stopped = await client.completions.create(prompt=[21, 22, 23], stop=[stop], **{**GREEDY, "max_tokens": 30})
    assert stopped.choices[0].text == full[:full.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"


async def test_logprobs_in_legacy_format(client: AsyncOpenAI) -> None:
    response = await client.completions.create(prompt=[7, 8, 9], logprobs=3, **GREEDY)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 8
    # Single-token strings of a split multi-byte character are U+FFFD each, so compare the prefix.
    assert "".join(logprobs.tokens).startswith(response.choices[0].text)
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    for logprob, top in zip(logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) <= 3 and max(top.values()) >= logprob - 1e-5  # greedy: the top token was chosen
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


async def test_echo_prepends_the_prompt_and_its_logprobs(client: AsyncOpenAI) -> None:
    prompt = "The quick brown fox"
    plain = await client.completions.create(prompt=prompt, **GREEDY)
    echoed = await client.completions.create(prompt=prompt, echo=True, logprobs=1, **GREEDY)
    assert echoed.choices[0].text == prompt + plain.choices[0].text
    logprobs = echoed.choices[0].logprobs
    num_prompt = echoed.usage.prompt_tokens
    assert len(logprobs.tokens) == num_prompt + 8
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None for lp in logprobs.token_logprobs[1:])
    assert logprobs.text_offset[num_prompt] == len(prompt)


async def test_same_seed_same_text(client: AsyncOpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt="To be", temperature=1.0, max_tokens=12, extra_body={"ignore_eos": True})
    first = await client.completions.create(seed=1234, **kwargs)
    again = await client.completions.create(seed=1234, **kwargs)
    other = await client.completions.create(seed=4321, **kwargs)
    assert first.choices[0].text == again.choices[0].text
    assert first.choices[0].text != other.choices[0].text


async def test_stream_matches_non_stream(client: AsyncOpenAI) -> None:
    expected = (await client.completions.create(prompt="All the world", **{**GREEDY, "max_tokens": 20})).choices[0]
    chunks = [c async for c in await client.completions.create(
        prompt="All the world", stream=True, stream_options={"include_usage": True}, **{**GREEDY, "max_tokens": 20})]
    *content, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in content) == expected.text
    assert [c.choices[0].finish_reason for c in content][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 20
    assert all(c.usage is None for c in content) and len({c.id for c in chunks}) == 1


async def test_stream_of_several_prompts_and_samples(client: AsyncOpenAI) -> None:
    stream = await client.completions.create(model=MODEL_NAME, prompt=["a b", "c d"], n=2, max_tokens=5,
                                             stream=True, seed=1, extra_body={"ignore_eos": True})
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    async for chunk in stream:
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        if choice.finish_reason is not None:
            assert choice.index not in finished
            finished[choice.index] = choice.finish_reason
    assert finished == {0: "length", 1: "length", 2: "length", 3: "length"}


async def test_stream_with_echo_and_logprobs(client: AsyncOpenAI) -> None:
    stream = await client.completions.create(prompt="Paged", echo=True, logprobs=2, stream=True, **GREEDY)
    chunks = [c.choices[0] async for c in stream]
    whole = await client.completions.create(prompt="Paged", echo=True, logprobs=2, **GREEDY)
    assert "".join(c.text for c in chunks) == whole.choices[0].text
    streamed_tokens = [t for c in chunks for t in c.logprobs.tokens]
    assert streamed_tokens == whole.choices[0].logprobs.tokens
