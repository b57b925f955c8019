"""One request's outputs on their way from the step loop to its consumer.

A consumer that falls behind (a busy event loop serving many streams) does
not get a backlog of per-step outputs: outputs waiting to be read merge into
one, the latest snapshot carrying every delta since the last read. So a
saturated server does its per-output work (chunk encoding, metrics, SSE
writes) once per read instead of once per step, and a slow stream holds one
output, not one per step.
"""

from __future__ import annotations

import asyncio

from helix.outputs import RequestOutput


class OutputStream:
    def __init__(self) -> None:
        self._pending: RequestOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, output: RequestOutput) -> None:
        """Add a step's output (a snapshot the stream may change)."""
        if self._pending is not None:
            _prepend_deltas(self._pending, output)
        self._pending = output
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    async def get(self) -> RequestOutput:
        """The next output, with every delta since the last one; raises the stream's error."""
        await self._ready.wait()
        self._ready.clear()
        if self._error is not None:
            raise self._error
        output, self._pending = self._pending, None
        assert output is not None, "the event is set only with an output or an error"
        return output


def _prepend_deltas(older: RequestOutput, newer: RequestOutput) -> None:
    """Make `newer`'s deltas cover `older`'s too (cumulative fields are already newer's)."""
    for old, new in zip(older.outputs, newer.outputs):
        new.delta_text = old.delta_text + new.delta_text
        new.delta_token_ids[:0] = old.delta_token_ids
