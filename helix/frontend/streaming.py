"""The streaming driver shared by completions and chat: engine outputs in,
SSE chunks out, with the error and disconnect rules in one place."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Protocol

import msgspec
from aiohttp import web

from helix.frontend.errors import APIError, engine_error
from helix.frontend.generation import Generation, merged_outputs
from helix.frontend.sse import EventStream
from helix.frontend.state import ServerState
from helix.outputs import RequestOutput

logger = logging.getLogger(__name__)


class ChunkBuilder(Protocol):
    def opening(self) -> list[msgspec.Struct]: ...

    def on_output(self, prompt_index: int, output: RequestOutput) -> list[msgspec.Struct]: ...

    def closing(self) -> list[msgspec.Struct]: ...


async def stream_generation(request: web.Request, state: ServerState, generation: Generation,
                            builder: ChunkBuilder) -> web.StreamResponse:
    stream = EventStream()
    try:
        await stream.start(request)
        for chunk in builder.opening():
            await stream.send(chunk)
        async with aclosing(merged_outputs(state, generation)) as outputs:
            async for prompt_index, output in outputs:
                for chunk in builder.on_output(prompt_index, output):
                    await stream.send(chunk)
        for chunk in builder.closing():
            await stream.send(chunk)
        await stream.done()
    except asyncio.CancelledError:
        raise
    except ConnectionError:
        pass  # the client went away; leaving `aclosing` aborted its requests
    except Exception as error:
        api_error = engine_error(error)
        if api_error is None:
            logger.exception("streaming %s failed", generation.request_id)
            api_error = APIError(500, "internal server error")
        try:
            await stream.send_error(api_error)
            await stream.done()
        except ConnectionError:
            pass
    return stream.response
