"""One request's outputs on their way from the step loop to its consumer.

A consumer that falls behind (a busy event loop serving many streams) does
not get a backlog of per-step outputs: outputs waiting to be read merge into
one (`merge_outputs`), the latest carrying everything new since the last read.
So a saturated server does its per-output work (chunk encoding, metrics, SSE
writes) once per read instead of once per step, and a slow stream holds one
output, not one per step.
"""

from __future__ import annotations

import asyncio

from helix.outputs import RequestOutput, merge_outputs


class OutputStream:
    def __init__(self) -> None:
        self._pending: RequestOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, output: RequestOutput) -> None:
        """Add a step's output (the stream's own: it may change it)."""
        self._pending = output if self._pending is None else merge_outputs(self._pending, output)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    async def get(self) -> RequestOutput:
        """The next output, with everything new since the last one; raises the stream's error."""
        await self._ready.wait()
        self._ready.clear()
        if self._error is not None:
            raise self._error
        output, self._pending = self._pending, None
        assert output is not None, "the event is set only with an output or an error"
        return output
