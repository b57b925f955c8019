"""A minimal OpenAI-compatible server for the load client's tests: GET /v1/models
and POST /v1/completions, streaming or not, nothing else (no /tokenize, no
/metrics unless asked for).

Each event is written in two pieces, split inside the JSON, with a pause in
between, so the client has to reassemble lines across reads. A request's
`stub` field picks a misbehaviour: "error" (an error event mid-stream),
"http503", "no_done" (the stream ends without [DONE]), "no_usage" (no usage
chunk even when asked). A non-streamed response comes after one token delay
per token. A request whose client disconnects while its handler runs has its
prompt recorded in `disconnected` (handlers are cancelled when their client
goes away, as in Helix's server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "stub-model"


@dataclass
class StubOptions:
    metrics: str | None = None  # None: no route; "html": an HTML page; "text": plain text that is not Prometheus
    token_delay_s: float = 0.002
    requests: list[dict] = field(default_factory=list)  # bodies received
    disconnected: list[Any] = field(default_factory=list)  # prompts of requests whose client went away


def token_text(index: int) -> str:
    return f"t{index} "


OPTIONS = web.AppKey("options", StubOptions)


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def _write_split(response: web.StreamResponse, event: bytes, delay_s: float) -> None:
    middle = len(event) // 2
    await response.write(event[:middle])
    await asyncio.sleep(delay_s / 2)
    await response.write(event[middle:])


def _chunk(choices: list[dict], usage: dict | None = None) -> bytes:
    body = {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": MODEL, "choices": choices,
            "usage": usage}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage(body: dict) -> dict:
    prompt = body["prompt"]
    prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())
    max_tokens = int(body.get("max_tokens") or 16)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}


async def _completions(request: web.Request) -> web.StreamResponse:
    options: StubOptions = request.app[OPTIONS]
    body = await request.json()
    options.requests.append(body)
    if body.get("stub") == "http503":
        return web.json_response({"error": {"message": "server is busy", "type": "service_unavailable"}},
                                 status=503)
    try:
        if body.get("stream"):
            return await _stream(request, body, options)
        return await _whole(body, options)
    except asyncio.CancelledError:
        options.disconnected.append(body["prompt"])
        raise
    except ConnectionResetError:
        options.disconnected.append(body["prompt"])
        return web.Response(status=499)  # never read: the client is gone


async def _whole(body: dict, options: StubOptions) -> web.Response:
    usage = _usage(body)
    tokens = usage["completion_tokens"]
    await asyncio.sleep(options.token_delay_s * tokens)
    text = "".join(token_text(i) for i in range(tokens))
    return web.json_response({"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": MODEL,
                              "choices": [{"index": 0, "text": text, "finish_reason": "length"}], "usage": usage})


async def _stream(request: web.Request, body: dict, options: StubOptions) -> web.StreamResponse:
    mode = body.get("stub")
    max_tokens = _usage(body)["completion_tokens"]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(max_tokens):
        if mode == "error" and i == 2:
            await _write_split(response, b'data: {"error": {"message": "engine failed", "type": "internal"}}\n\n',
                               options.token_delay_s)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finish = "length" if i == max_tokens - 1 else None
        await _write_split(response, _chunk([{"index": 0, "text": token_text(i), "finish_reason": finish}]),
                           options.token_delay_s)
    include_usage = (body.get("stream_options") or {}).get("include_usage")
    if include_usage and mode != "no_usage":
        await _write_split(response, _chunk([], _usage(body)), options.token_delay_s)
    if mode != "no_done":
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _metrics(request: web.Request) -> web.Response:
    options: StubOptions = request.app[OPTIONS]
    if options.metrics == "html":
        return web.Response(text="<html><body>metrics</body></html>", content_type="text/html")
    return web.Response(text="requests served: many\n", content_type="text/plain")


@asynccontextmanager
async def stub_server(options: StubOptions | None = None) -> AsyncIterator[tuple[str, StubOptions]]:
    """(base URL, options) of a running stub on a free port."""
    options = options or StubOptions()
    app = web.Application()
    app[OPTIONS] = options
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    if options.metrics is not None:
        app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", options
    finally:
        await runner.cleanup()
