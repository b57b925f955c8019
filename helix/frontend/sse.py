"""Server-sent events in OpenAI's framing: `data: {json}\\n\\n` per chunk, then
`data: [DONE]\\n\\n`. Errors after the headers went out travel as
`data: {"error": {...}}`."""

from __future__ import annotations

import msgspec
from aiohttp import web

from helix.frontend.errors import APIError
from helix.frontend.protocol import encode


class EventStream:
    def __init__(self) -> None:
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                    "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def start(self, request: web.Request) -> None:
        await self.response.prepare(request)

    async def send(self, chunk: msgspec.Struct) -> None:
        """Raises ConnectionError once the client has gone away."""
        await self.response.write(b"data: " + encode(chunk) + b"\n\n")

    async def send_error(self, error: APIError) -> None:
        await self.response.write(b"data: " + encode(error.body()) + b"\n\n")

    async def done(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
