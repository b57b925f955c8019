"""Property-based fuzzing of the request bodies: whatever JSON a client sends
to /v1/completions, /v1/chat/completions, /tokenize or /detokenize, the answer
is a 2xx or a 4xx in OpenAI's error shape, never a 5xx, and the engine keeps
serving with every KV block back in the pool afterwards."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.frontend.conftest import MODEL_NAME, Server, make_engine, running_server

LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=8)
SMALL_INTS = st.integers(min_value=-3, max_value=6)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
PROMPTS = (st.text(max_size=30) | st.lists(st.integers(min_value=-5, max_value=5000), max_size=6)
           | st.lists(st.text(max_size=10), max_size=3) | JSON)
SAMPLING: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": SMALL_INTS | JSON, "min_tokens": SMALL_INTS | JSON, "n": SMALL_INTS | JSON,
    "temperature": FLOATS | JSON, "top_p": FLOATS, "top_k": SMALL_INTS | JSON, "min_p": FLOATS,
    "presence_penalty": FLOATS, "frequency_penalty": FLOATS, "repetition_penalty": FLOATS,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20) | JSON,
    "stop_token_ids": st.lists(st.integers(min_value=-5, max_value=5000), max_size=4) | JSON,
    "logit_bias": st.dictionaries(st.text(max_size=5), FLOATS, max_size=3) | JSON,
    "seed": st.integers(min_value=-(2**65), max_value=2**65) | JSON, "ignore_eos": JSON,
    "best_of": SMALL_INTS | JSON, "user": JSON, "priority": SMALL_INTS | JSON,
    # Grammars: schemas of random JSON (most are not schemas), regexes of random text, choices.
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        optional={"json_schema": st.fixed_dictionaries({"name": st.text(max_size=5)}, optional={"schema": JSON})
                  | JSON}) | JSON,
    "structured_outputs": st.fixed_dictionaries({}, optional={
        "json": JSON, "json_object": JSON, "regex": st.text(max_size=12), "choice": st.lists(st.text(max_size=5),
                                                                                                max_size=3) | JSON,
    }) | JSON,
}
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "x"]),
                                           "content": st.text(max_size=20) | JSON}), max_size=3) | JSON
TOOLS = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "g", ""])}, optional={"parameters": JSON})}), max_size=2) | JSON
TOOL_CHOICES = (st.sampled_from(["none", "auto", "required"])
                | st.fixed_dictionaries({"type": st.just("function"),
                                         "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "h"])})})
                | JSON)
ROUTES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "/v1/completions": st.fixed_dictionaries(
        {"model": st.just(MODEL_NAME) | JSON, "prompt": PROMPTS},
        optional={**SAMPLING, "logprobs": SMALL_INTS | JSON, "echo": JSON}),
    "/v1/chat/completions": st.fixed_dictionaries(
        {"model": st.just(MODEL_NAME) | JSON, "messages": MESSAGES},
        optional={**SAMPLING, "logprobs": JSON, "top_logprobs": SMALL_INTS | JSON,
                  "max_completion_tokens": SMALL_INTS | JSON, "tools": TOOLS, "tool_choice": TOOL_CHOICES}),
    "/tokenize": st.fixed_dictionaries({}, optional={"prompt": PROMPTS, "messages": MESSAGES, "model": JSON}),
    "/detokenize": st.fixed_dictionaries({}, optional={"tokens": PROMPTS, "model": JSON}),
}


@pytest.fixture(scope="module")
def live_server(tiny_model_dirs: dict[str, Path]) -> Iterator[Server]:
    """A real server on its own event-loop thread, so hypothesis can drive it synchronously."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Any, Server]:
        context = running_server(make_engine(tiny_model_dirs["llama"], num_kv_blocks=128))
        return context, await context.__aenter__()

    context, server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=120)
    yield server
    asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(timeout=60)
    asyncio.run_coroutine_threadsafe(server.engine.shutdown(), loop).result(timeout=60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    data = json.dumps({**body, "stream": False} if "completions" in url else body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize("route", list(ROUTES))
def test_no_body_yields_a_5xx(live_server: Server, route: str) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=ROUTES[route])
    def check(body: dict[str, Any]) -> None:
        status, payload = post(live_server.url(route), body)
        assert status < 500, (status, payload)
        if status >= 400:
            assert set(payload["error"]) >= {"message", "type", "param", "code"}

    check()



VALID_COMPLETIONS = st.fixed_dictionaries(
    {"model": st.just(MODEL_NAME),
     "prompt": (st.text(min_size=1, max_size=30) | st.lists(st.integers(min_value=0, max_value=383), min_size=1,
                                                            max_size=8))},
    optional={"max_tokens": st.integers(min_value=1, max_value=6), "n": st.integers(min_value=1, max_value=3),
              "temperature": st.floats(min_value=0.0, max_value=2.0), "top_p": st.floats(min_value=0.05, max_value=1.0),
              "top_k": st.integers(min_value=-1, max_value=50), "min_p": st.floats(min_value=0.0, max_value=1.0),
              "presence_penalty": st.floats(min_value=-2.0, max_value=2.0),
              "repetition_penalty": st.floats(min_value=0.5, max_value=2.0),
              "stop": st.lists(st.text(min_size=1, max_size=3), max_size=3), "logprobs": st.integers(0, 5),
              "echo": st.booleans(), "seed": st.integers(min_value=0, max_value=2**31), "ignore_eos": st.booleans(),
              "logit_bias": st.dictionaries(st.integers(0, 383).map(str), st.floats(-100, 100), max_size=3)})


def test_every_valid_completion_body_succeeds(live_server: Server) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=VALID_COMPLETIONS)
    def check(body: dict[str, Any]) -> None:
        status, payload = post(live_server.url("/v1/completions"), body)
        assert status == 200, (body, payload)
        assert len(payload["choices"]) == body.get("n", 1)
        assert all(c["finish_reason"] in ("stop", "length") for c in payload["choices"])

    check()


GRAMMARS = st.one_of(
    st.fixed_dictionaries({"structured_outputs": st.fixed_dictionaries({"regex": st.text(max_size=16)})}),
    st.fixed_dictionaries({"structured_outputs": st.fixed_dictionaries(
        {"choice": st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4)})}),
    st.fixed_dictionaries({"structured_outputs": st.fixed_dictionaries({"json": JSON})}),
    st.fixed_dictionaries({"response_format": st.fixed_dictionaries({
        "type": st.just("json_schema"),
        "json_schema": st.fixed_dictionaries({"name": st.just("x"), "schema": JSON})})}),
)


def test_grammars_never_yield_a_5xx(live_server: Server) -> None:
    """Valid requests but for a random grammar: compiled and obeyed, or refused with a 400."""
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(grammar=GRAMMARS, temperature=st.sampled_from([0.0, 1.0]))
    def check(grammar: dict[str, Any], temperature: float) -> None:
        body = {"model": MODEL_NAME, "prompt": "The quick", "max_tokens": 4, "temperature": temperature, **grammar}
        status, payload = post(live_server.url("/v1/completions"), body)
        assert status in (200, 400), (body, payload)
        choices = grammar.get("structured_outputs", {}).get("choice")
        if status == 200 and choices and payload["choices"][0]["finish_reason"] == "stop":
            assert payload["choices"][0]["text"] in choices

    check()


def test_engine_still_serves_with_every_block_back(live_server: Server) -> None:
    status, payload = post(live_server.url("/v1/completions"), {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 3})
    assert status == 200 and payload["usage"]["completion_tokens"] >= 1
    stats = live_server.engine.stats()
    assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"] and stats["running"] == 0
