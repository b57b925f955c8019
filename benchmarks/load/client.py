"""One streaming request and what it measured.

Timing follows vLLM's benchmark: the clock starts just before the POST; TTFT
is the first SSE chunk that carries generated output (text, or for a model
without a tokenizer a completions chunk of empty text and no finish reason; a
chat stream's opening role-only chunk does not count), each later such chunk
adds one inter-token gap, and the latency ends at `[DONE]`. Token counts come
from the usage chunk (`stream_options.include_usage`); a server that sends
none gets its output counted in output-carrying chunks.

A stream that ends properly without any text (every token special, or an
immediate stop) still completes: its TTFT is the chunk with the finish reason.
Only a stream with neither text, a finish reason nor output tokens fails.

Without streaming (`RequestOptions(stream=False)`) the whole completion comes
in one response: TTFT equals the latency, there are no inter-token gaps, and
token counts come from the response's `usage`.

A request given a disconnect delay is abandoned if it is still running that
long after it was sent: the request is cancelled, which closes its connection,
and its result is marked `cancelled`, neither a success nor a failure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.load.datasets import SampleRequest
from benchmarks.load.sse import SSEParser, error_text, interpret

ENDPOINT_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass(frozen=True)
class Target:
    base_url: str
    endpoint: str  # completions | chat
    model: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url + ENDPOINT_PATHS[self.endpoint]


@dataclass(frozen=True)
class RequestOptions:
    temperature: float = 0.0
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    stream: bool = True


@dataclass
class RequestResult:
    success: bool = False
    cancelled: bool = False  # abandoned by the client on purpose: neither a success nor a failure
    error: str = ""
    error_kind: str = ""  # a short reason, counted in the summary
    prompt_len: int = 0
    output_tokens: int = 0
    usage_reported: bool = False
    ttft: float = 0.0  # seconds
    itl: list[float] = field(default_factory=list)  # seconds between text-carrying chunks
    latency: float = 0.0  # seconds, send to [DONE]
    generated_text: str = ""
    start: float = 0.0  # time.perf_counter() at send
    chunk_times: list[float] = field(default_factory=list)  # perf_counter() of each text-carrying chunk

    @property
    def tpot(self) -> float | None:
        """(latency - ttft) / (output_tokens - 1); None for failures and single-token outputs."""
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def failed(self) -> bool:
        return not self.success and not self.cancelled

    def fail(self, kind: str, text: str) -> RequestResult:
        self.success, self.error_kind, self.error = False, kind, text
        return self

    def cancel(self) -> RequestResult:
        """The client walked away: a result that keeps only the prompt length and the send time."""
        return RequestResult(cancelled=True, prompt_len=self.prompt_len, start=self.start)


def build_payload(target: Target, request: SampleRequest, options: RequestOptions) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": target.model, "temperature": options.temperature, "stream": options.stream}
    if options.stream:
        payload["stream_options"] = {"include_usage": True}
    if target.endpoint == "chat":
        if not isinstance(request.prompt, str):
            raise ValueError("the chat endpoint needs text prompts")
        payload["messages"] = [{"role": "user", "content": request.prompt}]
        payload["max_completion_tokens"] = request.output_len
    else:
        payload["prompt"] = request.prompt
        payload["max_tokens"] = request.output_len
    if options.ignore_eos:
        payload["ignore_eos"] = True
    payload.update(options.extra_body)
    return payload


async def send_request(session: aiohttp.ClientSession, target: Target, request: SampleRequest,
                       options: RequestOptions, disconnect_after_s: float | None = None) -> RequestResult:
    """Never raises for what the server or the network does: failures are in the result.
    With `disconnect_after_s`, a request still running that many seconds after it was
    sent is cancelled (its connection closed) and comes back with `cancelled` set."""
    payload = build_payload(target, request, options)
    result = RequestResult(prompt_len=request.prompt_len)
    result.start = time.perf_counter()
    try:
        async with asyncio.timeout(disconnect_after_s):
            await _exchange(session, target, payload, options.stream, result)
    except TimeoutError:  # only the disconnect timer: _exchange turns the network's timeouts into failures
        return result.cancel()
    return result


async def _exchange(session: aiohttp.ClientSession, target: Target, payload: dict[str, Any], stream: bool,
                    result: RequestResult) -> None:
    try:
        async with session.post(target.url, json=payload, headers=target.headers) as response:
            if response.status != 200:
                result.fail(f"HTTP {response.status}", await _http_error(response))
            elif stream:
                await _read_stream(response, result)
            else:
                await _read_response(response, result)
    except asyncio.CancelledError:
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        result.fail(type(error).__name__, f"{type(error).__name__}: {error}")


async def _read_stream(response: aiohttp.ClientResponse, result: RequestResult) -> None:
    parser = SSEParser()
    last: float | None = None
    finish_time: float | None = None
    chunks = 0
    pieces: list[str] = []
    done = False
    async for data in response.content.iter_any():
        events = parser.feed(data)
        now = time.perf_counter()
        for event in events:
            message = interpret(event)
            if message.error is not None:
                result.generated_text = "".join(pieces)
                result.fail("stream error", message.error)
                return
            if message.done:
                done = True
                break
            if message.usage is not None:
                result.usage_reported = True
                result.prompt_len = int(message.usage.get("prompt_tokens") or result.prompt_len)
                result.output_tokens = int(message.usage.get("completion_tokens") or 0)
            if message.finished and finish_time is None:
                finish_time = now
            if message.carries_output:
                if last is None:
                    result.ttft = now - result.start
                else:
                    result.itl.append(now - last)
                last = now
                chunks += 1
                result.chunk_times.append(now)
                pieces.append(message.text)
        if done:
            break
    if not done:
        for event in parser.close():
            message = interpret(event)
            if message.error is not None:
                result.fail("stream error", message.error)
                return
            done = done or message.done
    result.latency = time.perf_counter() - result.start
    result.generated_text = "".join(pieces)
    if not done:
        result.fail("incomplete stream", "the stream ended before data: [DONE]")
    elif chunks == 0 and finish_time is None and result.output_tokens == 0:
        result.fail("no output", "no chunk carried generated text or a finish reason")
    else:
        result.success = True
        if chunks == 0:
            result.ttft = (finish_time or time.perf_counter()) - result.start
        if not result.usage_reported:
            result.output_tokens = chunks


async def _read_response(response: aiohttp.ClientResponse, result: RequestResult) -> None:
    """A whole (non-streamed) completion: one chunk, so TTFT is the latency."""
    try:
        body = await response.json(content_type=None)
    except ValueError as error:
        result.fail("malformed response", f"the response is not JSON: {error}")
        return
    result.latency = result.ttft = time.perf_counter() - result.start
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices:
        result.fail("no output", "the response has no choices")
        return
    result.chunk_times.append(result.start + result.latency)
    result.generated_text = "".join(_response_text(choice) for choice in choices)
    usage = body.get("usage")
    if isinstance(usage, dict):
        result.usage_reported = True
        result.prompt_len = int(usage.get("prompt_tokens") or result.prompt_len)
        result.output_tokens = int(usage.get("completion_tokens") or 0)
    result.success = True


def _response_text(choice: Any) -> str:
    """The text of a completions choice or a chat choice's message."""
    if not isinstance(choice, dict):
        return ""
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


async def _http_error(response: aiohttp.ClientResponse) -> str:
    text = await response.text(errors="replace")
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    message = error_text(body.get("error", body)) if isinstance(body, dict) else text[:500]
    return f"HTTP {response.status}: {message}"
