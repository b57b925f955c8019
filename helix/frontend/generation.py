"""Running the engine requests of one HTTP request: one per prompt, merged.

The engine requests have DELTA outputs (see `sampling.py`): each carries only
what is new, so no step copies a request's whole output for the server.

Disconnect invariant: every engine stream is consumed by a pump task; closing
(or cancelling) `merged_outputs` cancels the pumps, which closes each engine
generator, whose `finally` aborts the request and frees its blocks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

from helix.frontend.errors import engine_error
from helix.frontend.metrics import RequestTracker
from helix.frontend.protocol import ChatMessage
from helix.frontend.sampling import EnginePrompt
from helix.frontend.state import ServerState
from helix.outputs import RequestOutput, merge_outputs
from helix.sampling_params import SamplingParams


@dataclass(frozen=True)
class PreparedPrompt:
    token_ids: list[int]
    text: str | None  # as the client sent it, when it was text


@dataclass(frozen=True)
class Generation:
    """Validated engine inputs for one HTTP request."""

    request_id: str
    prompts: list[PreparedPrompt]
    params: SamplingParams
    priority: int = 0
    cache_salt: str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def tokenize_prompts(state: ServerState, prompts: Sequence[EnginePrompt]) -> list[PreparedPrompt]:
    """Raises ValueError for text the tokenizer cannot take (or no tokenizer)."""
    token_ids = await asyncio.gather(*(state.engine.tokenize(p) for p in prompts))
    return [PreparedPrompt(ids, p if isinstance(p, str) else None) for p, ids in zip(prompts, token_ids)]


async def check_structured_outputs(state: ServerState, params: SamplingParams, field: str) -> None:
    """Compile the request's grammar, off the event loop, so one the engine cannot
    use is a 400 naming the request's `field`. Raises ValueError."""
    if params.structured_outputs is not None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, state.grammars.matcher, params.structured_outputs, field)


def prepare(state: ServerState, request_id: str, prompts: list[PreparedPrompt], params: SamplingParams,
            priority: int = 0, cache_salt: str | None = None) -> Generation:
    """Run the engine's admission checks (vocabulary, max_model_len, KV capacity) on
    every prompt before any is started, so a bad prompt fails the whole request cleanly."""
    for prompt in prompts:
        state.engine.limits.check(prompt.token_ids, params)
    return Generation(request_id, prompts, params, priority, cache_salt)


async def merged_outputs(state: ServerState,
                         generation: Generation) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """(prompt index, output) as outputs arrive from all prompts; use under `aclosing`."""
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()
    pumps = [asyncio.create_task(_pump(state, generation, index, queue)) for index in range(len(generation.prompts))]
    try:
        remaining = len(pumps)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(state: ServerState, generation: Generation, index: int,
                queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]]) -> None:
    tracker: RequestTracker = state.metrics.track(generation.params.n)
    # An async generator (annotated as an iterator): closing it aborts the request.
    stream = cast(AsyncGenerator[RequestOutput, None], state.engine.generate(
        generation.prompts[index].token_ids, generation.params, request_id=f"{generation.request_id}-{index}",
        priority=generation.priority, cache_salt=generation.cache_salt))
    try:
        async with aclosing(stream):
            async for output in stream:
                tracker.observe(output)
                queue.put_nowait((index, output))
    except asyncio.CancelledError:
        tracker.aborted()
        raise
    except Exception as error:
        queue.put_nowait((index, error))
        return
    queue.put_nowait((index, None))


async def final_outputs(state: ServerState, generation: Generation) -> list[RequestOutput]:
    """The whole finished output of every prompt (its outputs merged), in prompt order;
    engine errors become API errors."""
    wholes: list[RequestOutput | None] = [None] * len(generation.prompts)
    try:
        async with aclosing(merged_outputs(state, generation)) as outputs:
            async for index, output in outputs:
                whole = wholes[index]
                wholes[index] = output if whole is None else merge_outputs(whole, output)
    except Exception as error:
        api_error = engine_error(error)
        if api_error is None:
            raise
        raise api_error from error
    assert all(w is not None and w.finished for w in wholes), "every engine stream ends with a finished output"
    return wholes  # type: ignore[return-value]


async def tokenize_chat(state: ServerState, messages: list[ChatMessage], add_generation_prompt: bool = True,
                        tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Render the chat template and tokenize, off the event loop. Raises ValueError."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, state.chat_template.tokenize, state.tokenizer, messages,
                                      add_generation_prompt, tools)
