"""Tool calls parsed from what the model writes (tool_choice "auto" with
--tool-call-parser): the parsers on their own, then through the server, with
the model's output pinned by a regex so that it writes calls."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from helix.engine import AsyncEngine
from helix.frontend.tool_calls import HermesToolCalls, Llama3JsonToolCalls
from tests.frontend.conftest import LOOP, MODEL_NAME, running_server

HERMES = HermesToolCalls()
LLAMA3 = Llama3JsonToolCalls()
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Verona"}}\n</tool_call>'


def test_text_then_calls() -> None:
    answer = HERMES.answer("Let me look.\n" + CALL + "\n" + CALL.replace("Verona", "Mantua"))
    assert answer.content == "Let me look."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in answer.calls] == [
        ("get_weather", {"city": "Verona"}), ("get_weather", {"city": "Mantua"})]
    assert len({c.id for c in answer.calls}) == 2


@pytest.mark.parametrize("text", ["No tools needed.", "<tool_call>\n{not json}\n</tool_call>",
                                  '<tool_call>{"arguments": {}}</tool_call>', "<tool_call>[1, 2]</tool_call>"])
def test_text_without_a_well_formed_call_stays_text(text: str) -> None:
    answer = HERMES.answer(text)
    assert answer.content == text and answer.calls == []


def test_a_call_the_model_did_not_close_still_counts() -> None:
    answer = HERMES.answer('<tool_call>{"name": "f", "arguments": {"x": 1}}')
    assert answer.content is None and [c.function.name for c in answer.calls] == ["f"]


def test_only_content_that_cannot_start_a_call_is_released() -> None:
    assert HERMES.releasable("Hello") == 5
    assert HERMES.releasable("Hello <tool") == len("Hello ")
    assert HERMES.releasable("Hello <") == len("Hello ")
    assert HERMES.releasable("Hello <b>") == len("Hello <b>")
    assert HERMES.releasable("Hi " + CALL) == 3


def test_llama3_json_calls() -> None:
    answer = LLAMA3.answer(' {"name": "f", "parameters": {"x": 1}}; {"name": "g", "arguments": {}}\n')
    assert answer.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in answer.calls] == [("f", {"x": 1}),
                                                                                           ("g", {})]
    for text in ("The answer is 4.", '{"name": "f"} and then text', "{not json}", '{"parameters": {}}', "[1]"):
        assert LLAMA3.answer(text) == type(answer)(text, [])
    assert LLAMA3.releasable("The answer") == len("The answer")
    assert LLAMA3.releasable('  {"na') == 0 and LLAMA3.releasable("  ") == 0


PIECES = st.sampled_from(["<tool_call>", "</tool_call>", "<tool", "_call>", "<", "{", "}", '"name"', ":", '"f"',
                          '"arguments"', "[", "]", "1", " ", "\n", "text"])


@settings(max_examples=300, deadline=None, database=None)
@given(pieces=st.lists(PIECES, max_size=14))
def test_any_text_parses_without_error_and_releases_no_tag(pieces: list[str]) -> None:
    text = "".join(pieces)
    answer = HERMES.answer(text)
    assert answer.calls or answer.content == text
    release = HERMES.releasable(text)
    assert 0 <= release <= len(text) and "<tool_call>" not in text[:release]
    # What is released stays released: a longer output never takes it back.
    assert all(HERMES.releasable(text + more) >= release for more in ("", "x", "<tool_call>"))
    llama = LLAMA3.answer(text)
    assert llama.calls or llama.content == text
    assert LLAMA3.releasable(text) in (0, len(text))


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PINNED = {"structured_outputs": {"regex": re.escape("Let me look.\n" + CALL)}, "ignore_eos": True}


@pytest.mark.asyncio(loop_scope=LOOP)
async def test_llama3_json_through_the_server(engine: AsyncEngine) -> None:
    call = '{"name": "get_weather", "parameters": {"city": "Mantua"}}'
    async with running_server(engine, tool_call_parser="llama3_json") as server:
        client = AsyncOpenAI(base_url=server.url("/v1"), api_key="unused")
        response = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Weather in Mantua?"}], tools=[WEATHER],
            temperature=0.0, max_tokens=240,
            extra_body={"structured_outputs": {"regex": re.escape(call)}, "ignore_eos": True})
        (answer,) = response.choices
        assert answer.finish_reason == "tool_calls" and answer.message.content is None
        (made,) = answer.message.tool_calls
        assert made.function.name == "get_weather" and json.loads(made.function.arguments) == {"city": "Mantua"}
        await client.close()


@pytest.mark.asyncio(loop_scope=LOOP)
async def test_auto_tool_choice_through_the_server(engine: AsyncEngine) -> None:
    async with running_server(engine, tool_call_parser="hermes") as server:
        client = AsyncOpenAI(base_url=server.url("/v1"), api_key="unused")
        kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Weather in Verona?"}],
                      tools=[WEATHER], temperature=0.0, max_tokens=240, extra_body=PINNED)
        response = await client.chat.completions.create(**kwargs)
        (answer,) = response.choices
        assert answer.finish_reason == "tool_calls" and answer.message.content == "Let me look."
        (call,) = answer.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Verona"}

        chunks = [chunk async for chunk in await client.chat.completions.create(stream=True, **kwargs)]
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        content = "".join(d.content or "" for d in deltas)
        assert content.strip() == "Let me look." and "<tool" not in content
        (streamed,) = [call for d in deltas for call in (d.tool_calls or [])]
        assert (streamed.function.name, streamed.function.arguments) == ("get_weather", call.function.arguments)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        await client.close()
