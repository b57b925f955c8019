"""Every validation rule answers with its status and OpenAI's error shape, and
no input produces a 500 or harms the engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from helix.engine import AsyncEngine
from helix.frontend.errors import error_middleware
from helix.frontend.protocol import MAX_N, MAX_PROMPTS, MAX_STOP_STRINGS, ChatCompletionRequest, CompletionRequest
from helix.sampling_params import MAX_LOGPROBS
from tests.frontend.conftest import LOOP, MODEL_NAME, Server, make_engine, running_server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)

CHAT = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


async def call(http: aiohttp.ClientSession, url: str, body: Any = None, raw: bytes | None = None,
               method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with http.request(method, url, data=data, headers=headers) as response:
        text = await response.text()
        return response.status, dict(response.headers), json.loads(text) if text else None


def assert_error(status: int, payload: Any, expected_status: int, *fragments: str) -> None:
    assert status == expected_status, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("invalid_request_error" if expected_status < 500 else error["type"])
    for fragment in fragments:
        assert fragment in error["message"], error["message"]


COMPLETION_CASES = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": ["a", 5]}, "not a mix"),
    ({"prompt": [1, 2], "max_tokens": 600}, "max_model_len (512)"),
    ({"prompt": [999_999]}, "outside the vocabulary"),
    ({"prompt": [-1]}, "outside the vocabulary"),
    ({"prompt": "hi", "model": "gpt-4"}, "gpt-4"),
    ({"prompt": "hi", "n": MAX_N + 1}, "$.n"),
    ({"prompt": "hi", "logprobs": MAX_LOGPROBS + 1}, "$.logprobs"),
    ({"prompt": ["x"] * (MAX_PROMPTS + 1)}, "at most 64 prompts"),
    ({"prompt": "hi", "stop": ["s"] * (MAX_STOP_STRINGS + 1)}, "$.stop"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "temperature": "hot"}, "$.temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 2**62}, "max_model_len (512)"),
    ({"prompt": "hi", "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"prompt": "hi", "best_of": 2}, "best_of"),
    ({"prompt": "hi", "suffix": "The end."}, "suffix"),
    ({"prompt": "hi", "structured_outputs": {"regex": "(", "choice": ["a"]}}, "exactly one"),
    ({"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "no-such-type"}}}}, "response_format: cannot be compiled"),
    ({"prompt": "hi", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "hi", "logit_bias": {"5": 1000}}, "$.logit_bias"),
    ({"prompt": "hi", "logit_bias": {"99999": 1}}, "outside the vocabulary"),
    ({"prompt": "hi", "stop_token_ids": [99999]}, "stop_token_ids"),
    ({"prompt": "hi", "seed": 2**64}, "$.seed"),
    ({"prompt": "hi", "top_k": 2**70}, "$.top_k"),
    ({"prompt": "hi", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "hi", "stream_options": {"include_usage": "yes"}}, "include_usage"),
    ({"max_tokens": 3}, "prompt"),
]


@pytest.mark.parametrize(("body", "fragment"), COMPLETION_CASES)
async def test_completion_validation(server: Server, http: aiohttp.ClientSession, body: dict, fragment: str) -> None:
    for stream in (False, True):  # streaming requests are validated before any byte is sent
        status, _, payload = await call(http, server.url("/v1/completions"), {**body, "stream": stream})
        assert_error(status, payload, 400, fragment)


async def test_prompt_too_long_names_both_numbers(server: Server, http: aiohttp.ClientSession) -> None:
    status, _, payload = await call(http, server.url("/v1/completions"), {"prompt": list(range(1, 300)),
                                                                          "max_tokens": 300})
    assert_error(status, payload, 400, "299 tokens", "300", "512")


CHAT_CASES = [
    ({"messages": []}, "$.messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "$.messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "$.messages[0].content"),
    ({"messages": CHAT, "logprobs": True, "top_logprobs": 21}, "$.top_logprobs"),
    ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": CHAT, "max_completion_tokens": 10_000}, "max_model_len"),
    ({"messages": CHAT, "n": 17}, "$.n"),
    ({"messages": CHAT, "model": "other"}, "other"),
    ({"messages": "hi"}, "$.messages"),
    ({"messages": CHAT, "response_format": {"type": "json_schema"}}, "needs a json_schema"),
    ({"messages": CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "$.response_format.json_schema"),
    ({"messages": CHAT, "response_format": {"type": "json_schema",
                                            "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}},
     "response_format: cannot be compiled"),
    ({"messages": CHAT, "response_format": {"type": "yaml"}}, "$.response_format.type"),
    ({"messages": CHAT, "structured_outputs": {"grammar": "start: x"}}, "$.structured_outputs"),
    ({"messages": CHAT, "structured_outputs": {"regex": "[0-9"}}, "structured_outputs: cannot be compiled"),
    ({"messages": CHAT, "structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"messages": CHAT, "structured_outputs": {"choice": ["a"]}, "response_format": {"type": "json_object"}},
     "not both"),
    ({"messages": CHAT, "tools": [TOOL]}, 'tool_choice: "auto"'),
    ({"messages": CHAT, "tools": [TOOL], "tool_choice": "auto"}, 'tool_choice: "auto"'),
    ({"messages": CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "no tool is named 'g'"),
    ({"messages": CHAT, "tool_choice": "required"}, "tool_choice: there are no tools"),
    ({"messages": CHAT, "tools": [TOOL, TOOL], "tool_choice": "required"}, "names must be unique"),
    ({"messages": CHAT, "tools": [TOOL], "tool_choice": "sometimes"}, "$.tool_choice"),
    ({"messages": CHAT, "tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "cannot also follow response_format"),
    ({"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "no-such-type"}}}], "tool_choice": "required"}, "tools: cannot be compiled"),
    ({"messages": CHAT, "tools": "f"}, "$.tools"),
    ({"messages": CHAT, "tools": [{"type": "function"}]}, "$.tools[0]"),
]


@pytest.mark.parametrize(("body", "fragment"), CHAT_CASES)
async def test_chat_validation(server: Server, http: aiohttp.ClientSession, body: dict, fragment: str) -> None:
    status, _, payload = await call(http, server.url("/v1/chat/completions"), body)
    assert_error(status, payload, 400, fragment)


DEEP = 200_000  # nesting far past any recursion limit
MALFORMED_BODIES = [b"", b"{", b"[]", b"null", b'"text"', b"\xff\xfe", b'{"prompt": "\\ud800"}',
                    b'{"prompt": "\xff\xfe"}', b'{"prompt": "hi", "stop": ["\xed\xa0\x80"]}',
                    b'{"prompt": "hi", "temperature": 1e999}', b'{"prompt": "hi", "top_p": NaN}',
                    b"[" * DEEP, b'{"prompt": ' + b"[" * DEEP,
                    b'{"prompt": "hi", "unknown": ' + b"[" * DEEP + b"]" * DEEP + b"}"]


@pytest.mark.parametrize("raw", MALFORMED_BODIES, ids=lambda raw: repr(raw[:24]))
async def test_malformed_bodies(server: Server, http: aiohttp.ClientSession, raw: bytes) -> None:
    status, _, payload = await call(http, server.url("/v1/completions"), raw=raw)
    assert_error(status, payload, 400, "invalid request body")


async def test_token_routes_validation(server: Server, http: aiohttp.ClientSession) -> None:
    for path, body in [("/tokenize", {}), ("/tokenize", {"prompt": "a", "messages": CHAT}),
                       ("/detokenize", {"tokens": [10**6]}), ("/detokenize", {"tokens": "abc"}),
                       ("/tokenize", {"prompt": "a", "model": "nope"})]:
        status, _, payload = await call(http, server.url(path), body)
        assert_error(status, payload, 400)


async def test_not_found_and_method_not_allowed(server: Server, http: aiohttp.ClientSession) -> None:
    status, _, payload = await call(http, server.url("/v1/nothing"), {})
    assert_error(status, payload, 404, "/v1/nothing")
    status, headers, payload = await call(http, server.url("/v1/completions"), method="GET")
    assert_error(status, payload, 405, "GET")
    assert "POST" in headers["Allow"]


async def test_body_over_the_limit(engine: AsyncEngine, http: aiohttp.ClientSession) -> None:
    async with running_server(engine, max_body_bytes=1024) as server:
        status, _, payload = await call(http, server.url("/v1/completions"), {"prompt": "x" * 2000})
        assert_error(status, payload, 413)
        status, _, _ = await call(http, server.url("/v1/completions"), {"prompt": "x", "max_tokens": 1})
        assert status == 200


async def test_api_key(engine: AsyncEngine, http: aiohttp.ClientSession) -> None:
    async with running_server(engine, api_key="sesame") as server:
        url = server.url("/v1/completions")
        body = {"prompt": "hi", "max_tokens": 1}
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"},
                        {"Authorization": "Basic sesame"}):
            status, response_headers, payload = await call(http, url, body, headers=headers)
            assert_error(status, payload, 401, "API key")
        for path in ("/v1/models", "/metrics", "/version", "/openapi.json", "/v1/unknown"):
            status, _, payload = await call(http, server.url(path), method="GET")
            assert_error(status, payload, 401)
        status, _, _ = await call(http, url, body, headers={"Authorization": "Bearer sesame"})
        assert status == 200
        status, _, _ = await call(http, server.url("/health"), method="GET")
        assert status == 200


async def test_busy_server_answers_503_with_retry_after(engine: AsyncEngine, http: aiohttp.ClientSession) -> None:
    async with running_server(engine, max_queued_requests=1) as server:
        long = {"prompt": [1, 2, 3], "max_tokens": 400, "ignore_eos": True, "stream": True}
        async with http.post(server.url("/v1/completions"), json=long) as streaming:
            await streaming.content.readline()  # admitted and generating
            status, headers, payload = await call(http, server.url("/v1/completions"), {"prompt": "hi"})
            assert_error(status, payload, 503, "busy")
            assert int(headers["Retry-After"]) >= 1
            status, _, _ = await call(http, server.url("/tokenize"), {"prompt": "hi"})
            assert status == 200  # only generation requests queue
        ok = {"prompt": "hi", "max_tokens": 1}
        for _ in range(100):  # the aborted stream leaves its place promptly
            status, _, _ = await call(http, server.url("/v1/completions"), ok)
            if status == 200:
                break
            await asyncio.sleep(0.02)
        assert status == 200


async def test_dead_engine_answers_503(tiny_model_dirs: dict[str, Path], http: aiohttp.ClientSession) -> None:
    engine = make_engine(tiny_model_dirs["llama"], num_kv_blocks=32)

    def broken(_step: Any) -> Any:
        raise RuntimeError("injected fault")

    engine.core.runner.launch = broken
    try:
        async with running_server(engine) as server:
            status, _, payload = await call(http, server.url("/v1/completions"), {"prompt": "hi"})
            assert_error(status, payload, 503, "injected fault")
            assert not engine.is_running
            status, _, payload = await call(http, server.url("/health"), method="GET")
            assert_error(status, payload, 503)
            status, _, payload = await call(http, server.url("/v1/chat/completions"), {"messages": CHAT})
            assert_error(status, payload, 503)
    finally:
        await engine.shutdown()


async def test_unexpected_exception_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/broken", broken)
    from aiohttp.test_utils import TestClient, TestServer
    async with TestClient(TestServer(app)) as test_client:
        response = await test_client.get("/broken")
        payload = await response.json()
    assert response.status == 500 and payload["error"]["type"] == "server_error"
    assert "bug" not in payload["error"]["message"]  # internals stay in the log
    assert any("unhandled error" in r.message for r in caplog.records)


_ODD_VALUES: list[Any] = [None, True, -1, 0, 2**63, -(2**70), 1e308, -1e308, "", "x" * 50, [], [None], [2**70],
                          {}, {"1": 1e308}, {"x": "y"}, [[1e300]]]


@pytest.mark.parametrize(("path", "struct", "base"), [
    ("/v1/completions", CompletionRequest, {"prompt": "hi", "max_tokens": 2}),
    ("/v1/chat/completions", ChatCompletionRequest, {"messages": CHAT, "max_tokens": 2}),
])
async def test_no_input_gives_a_500(server: Server, http: aiohttp.ClientSession, path: str, struct: type,
                                    base: dict) -> None:
    """Every field set to every odd value: 200 or a 4xx, never a 500, and the engine lives on."""
    statuses = set()
    for field in msgspec.structs.fields(struct):
        if field.encode_name in ("stream",):
            continue
        for value in _ODD_VALUES:
            body = {**base, field.encode_name: value}
            if field.encode_name == "max_tokens" and isinstance(value, (int, float)) and 0 < value < 1e6:
                body["max_tokens"] = 2
            status, _, payload = await call(http, server.url(path), body)
            statuses.add(status)
            assert status in (200, 400), (body, payload)
            if status == 400:
                assert payload["error"]["type"] == "invalid_request_error"
    assert statuses == {200, 400}
    assert server.engine.is_running
    status, _, payload = await call(http, server.url(path), base)
    assert status == 200 and payload["model"] == MODEL_NAME


async def test_error_after_headers_is_an_sse_error_event(tiny_model_dirs: dict[str, Path],
                                                         http: aiohttp.ClientSession) -> None:
    engine = make_engine(tiny_model_dirs["llama"], num_kv_blocks=32)
    launch, steps = engine.core.runner.launch, 0

    def fails_on_step_5(step: Any) -> Any:
        nonlocal steps
        steps += 1
        if steps == 5:
            raise RuntimeError("injected fault")
        return launch(step)

    engine.core.runner.launch = fails_on_step_5
    try:
        async with running_server(engine) as server:
            body = {"prompt": [1, 2, 3], "max_tokens": 20, "ignore_eos": True, "stream": True}
            async with http.post(server.url("/v1/completions"), json=body) as response:
                assert response.status == 200
                events = [line.decode().strip() async for line in response.content if line.strip()]
    finally:
        await engine.shutdown()
    assert events[-1] == "data: [DONE]"
    assert events[0].startswith('data: {"id"')  # tokens went out before the fault
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "service_unavailable" and "injected fault" in error["message"]
