"""/v1/chat/completions with the default chat template (the tiny tokenizer has none)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI

from helix.engine import AsyncEngine
from helix.frontend.chat_template import DEFAULT_CHAT_TEMPLATE
from tests.frontend.conftest import LOOP, MODEL_NAME, Server, running_server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]
GREEDY = dict(model=MODEL_NAME, temperature=0.0, max_tokens=10, extra_body={"ignore_eos": True})


async def chat_tokens(http: aiohttp.ClientSession, server: Server, messages: list[dict]) -> list[int]:
    async with http.post(server.url("/tokenize"), json={"messages": messages}) as response:
        assert response.status == 200
        return (await response.json())["tokens"]


async def test_default_template_text(server: Server, http: aiohttp.ClientSession) -> None:
    expected = "<|system|>\nBe brief.\n<|user|>\nThe quick brown fox\n<|assistant|>\n"
    tokens = await chat_tokens(http, server, MESSAGES)
    async with http.post(server.url("/detokenize"), json={"tokens": tokens}) as response:
        assert (await response.json())["prompt"] == expected
    assert "<|assistant|>" in DEFAULT_CHAT_TEMPLATE


async def test_developer_role_is_the_system_role(client: AsyncOpenAI, server: Server,
                                                http: aiohttp.ClientSession) -> None:
    developer = [{"role": "developer", "content": "Be brief."}, MESSAGES[1]]
    assert await chat_tokens(http, server, developer) == await chat_tokens(http, server, MESSAGES)
    with_developer = await client.chat.completions.create(messages=developer, **GREEDY)
    with_system = await client.chat.completions.create(messages=MESSAGES, **GREEDY)
    assert with_developer.choices[0].message.content == with_system.choices[0].message.content


async def test_accepted_fields_that_change_nothing(client: AsyncOpenAI) -> None:
    """A text response_format, and tools the model may not call (tool_choice "none"), are accepted."""
    expected = (await client.chat.completions.create(messages=MESSAGES, **GREEDY)).choices[0].message.content
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    for extra in ({"response_format": {"type": "text"}}, {"tools": [tool], "tool_choice": "none"}):
        response = await client.chat.completions.create(messages=MESSAGES, **GREEDY, **extra)
        assert response.choices[0].message.content == expected, extra


async def test_response_format_json_schema(client: AsyncOpenAI) -> None:
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}
    # No ignore_eos: EOS stays forbidden until the document is complete, which ends the request.
    kwargs = {**{k: v for k, v in GREEDY.items() if k != "extra_body"}, "max_tokens": 64}
    response = await client.chat.completions.create(messages=MESSAGES, response_format=response_format, **kwargs)
    (choice,) = response.choices
    document = json.loads(choice.message.content)
    assert choice.finish_reason == "stop" and list(document) == ["answer", "sure"]
    assert document["answer"] in ("yes", "no") and isinstance(document["sure"], bool)

    stream = await client.chat.completions.create(messages=MESSAGES, response_format=response_format, stream=True,
                                                  **kwargs)
    streamed = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert streamed == choice.message.content


async def test_response_format_json_object(client: AsyncOpenAI) -> None:
    kwargs = {k: v for k, v in GREEDY.items() if k != "max_tokens"}
    response = await client.chat.completions.create(messages=MESSAGES, response_format={"type": "json_object"},
                                                    max_tokens=6, **kwargs)
    assert response.choices[0].message.content.startswith("{")


async def test_structured_outputs_choice_on_both_routes(client: AsyncOpenAI) -> None:
    choices = ["yes", "no", "maybe not"]
    extra = {"extra_body": {"structured_outputs": {"choice": choices}}}
    kwargs = {k: v for k, v in GREEDY.items() if k != "extra_body"}
    chat = await client.chat.completions.create(messages=MESSAGES, **{**kwargs, "temperature": 1.0}, n=4, seed=3,
                                                **extra)
    assert all(c.message.content in choices and c.finish_reason == "stop" for c in chat.choices)
    completion = await client.completions.create(prompt="The quick", **kwargs, **extra)
    assert completion.choices[0].text in choices and completion.choices[0].finish_reason == "stop"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Verona", "Mantua"]},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ALARM = {"type": "function", "function": {
    "name": "set_alarm", "parameters": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 0,
                                                                                 "maximum": 23}},
                                        "required": ["hour"], "additionalProperties": False}}}
TOOL_KWARGS = {**{k: v for k, v in GREEDY.items() if k != "extra_body"}, "max_tokens": 64}


async def test_named_tool_choice_calls_that_function(client: AsyncOpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    response = await client.chat.completions.create(messages=MESSAGES, tools=[WEATHER, ALARM], tool_choice=choice,
                                                    **TOOL_KWARGS)
    (answer,) = response.choices
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    (call,) = answer.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] in ("Verona", "Mantua") and arguments["unit"] in ("C", "F")

    stream = await client.chat.completions.create(messages=MESSAGES, tools=[WEATHER, ALARM], tool_choice=choice,
                                                  stream=True, **TOOL_KWARGS)
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and not deltas[0].content
    streamed = [call for delta in deltas for call in (delta.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [("get_weather", call.function.arguments)]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_required_tool_choice_calls_one_of_the_tools(client: AsyncOpenAI) -> None:
    response = await client.chat.completions.create(messages=MESSAGES, tools=[WEATHER, ALARM], tool_choice="required",
                                                    n=3, seed=1, **{**TOOL_KWARGS, "temperature": 1.0})
    for answer in response.choices:
        (call,) = answer.message.tool_calls
        arguments = json.loads(call.function.arguments)
        assert call.function.name in ("get_weather", "set_alarm") and answer.finish_reason == "tool_calls"
        if call.function.name == "set_alarm":
            assert list(arguments) == ["hour"] and 0 <= arguments["hour"] <= 23
        else:
            assert set(arguments) == {"city", "unit"}
    assert len({c.message.tool_calls[0].id for c in response.choices}) == 3


async def test_a_call_cut_by_max_tokens_stays_text(client: AsyncOpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    response = await client.chat.completions.create(messages=MESSAGES, tools=[WEATHER], tool_choice=choice,
                                                    **{**TOOL_KWARGS, "max_tokens": 3})
    (answer,) = response.choices
    assert answer.finish_reason == "length" and answer.message.tool_calls is None
    assert answer.message.content.startswith("{")


async def test_a_conversation_with_tool_results(client: AsyncOpenAI, server: Server,
                                                http: aiohttp.ClientSession) -> None:
    """Assistant tool calls and tool answers in the history are accepted and reach the template."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Verona", "unit": "C"}'}}
    history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, fair"}]
    tokens = await chat_tokens(http, server, history)
    async with http.post(server.url("/detokenize"), json={"tokens": tokens}) as response:
        text = (await response.json())["prompt"]
    assert text.endswith("<|tool|>\n18 degrees, fair\n<|assistant|>\n")
    response = await client.chat.completions.create(messages=history, tools=[WEATHER], tool_choice="none",
                                                    **TOOL_KWARGS)
    assert isinstance(response.choices[0].message.content, str)


async def test_chat_completion(client: AsyncOpenAI, server: Server, http: aiohttp.ClientSession) -> None:
    response = await client.chat.completions.create(messages=MESSAGES, **GREEDY)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    (choice,) = response.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert response.usage.prompt_tokens == len(await chat_tokens(http, server, MESSAGES))
    assert response.usage.completion_tokens == 10

    prompt = await chat_tokens(http, server, MESSAGES)
    plain = await client.completions.create(prompt=prompt, **GREEDY)
    assert plain.choices[0].text == choice.message.content

    body = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2}
    async with http.post(server.url("/v1/chat/completions"), json=body) as raw:
        message = (await raw.json())["choices"][0]["message"]
    assert set(message) == {"role", "content"}  # no tool_calls key without calls, as OpenAI answers


async def test_content_parts_and_max_completion_tokens(client: AsyncOpenAI) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "The quick"}, {"type": "text", "text": "fox"}]}]
    joined = [{"role": "user", "content": "The quick\nfox"}]
    kwargs = {k: v for k, v in GREEDY.items() if k != "max_tokens"}
    first = await client.chat.completions.create(messages=parts, max_completion_tokens=4, **kwargs)
    second = await client.chat.completions.create(messages=joined, max_completion_tokens=4, **kwargs)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage.completion_tokens == 4


async def test_chat_stream(client: AsyncOpenAI) -> None:
    expected = (await client.chat.completions.create(messages=MESSAGES, **GREEDY)).choices[0].message.content
    stream = await client.chat.completions.create(messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True}, **GREEDY)
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first, *content, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content) == expected
    assert content[-1].choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage.completion_tokens == 10


async def test_chat_n_and_logprobs(client: AsyncOpenAI) -> None:
    response = await client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, n=2, max_tokens=5, logprobs=True, top_logprobs=2, seed=11,
        extra_body={"ignore_eos": True})
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        entries = choice.logprobs.content
        assert len(entries) == 5
        assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 and e.bytes == list(e.token.encode())
                   for e in entries)


async def test_chat_template_file_overrides(engine: AsyncEngine, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}[answer]")
    async with running_server(engine, chat_template_file=str(template)) as server:
        tokens = await chat_tokens(http, server, MESSAGES)
        async with http.post(server.url("/detokenize"), json={"tokens": tokens}) as response:
            text = (await response.json())["prompt"]
    assert text == "[system] Be brief. [user] The quick brown fox [answer]"
