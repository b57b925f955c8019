"""AsyncEngine: per-request async streams over one EngineCore.

The step loop is an asyncio task; each step runs on a single worker thread so
the event loop (and the HTTP server on it) keeps answering while the model
runs. Tokenization runs on a separate small pool. A request's stream ends when
it finishes, errors or is aborted; a consumer that stops iterating (a client
that disconnected) aborts its request, which frees its blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from helix.engine_args import EngineArgs
from helix.engine_core import EngineCore, prompt_token_ids
from helix.output_stream import OutputStream
from helix.outputs import RequestOutput
from helix.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The step loop failed; the engine serves no more requests."""


class RequestFailedError(RuntimeError):
    """The engine failed this one request (e.g. out of memory in its step) and
    carries on serving the others."""


class AsyncEngine:
    def __init__(self, model: str | None = None, **kwargs: Any):
        args = EngineArgs.from_kwargs(model=model, **kwargs)
        self._step_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="helix-step")
        # Built on the thread that runs its steps: on CPU, torch's OpenMP pool of the
        # building thread otherwise competes with the step thread's (3.5x slower steps
        # on 2 cores).
        try:
            self.core = self._step_thread.submit(EngineCore, args).result()
        except BaseException:
            self._step_thread.shutdown(wait=False)
            raise
        self._tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="helix-tokenize")
        self._streams: dict[str, OutputStream] = {}
        self._has_work = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self.dead_error: BaseException | None = None
        self.died = asyncio.Event()  # set once the step loop has failed

    @property
    def tokenizer(self) -> Any:
        return self.core.tokenizer

    @property
    def is_running(self) -> bool:
        return self.dead_error is None

    async def tokenize(self, prompt: str | list[int]) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenize_pool, prompt_token_ids, self.tokenizer, prompt)

    async def generate(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None,
                       priority: int = 0, cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutputs as steps change the request (outputs of steps the consumer
        has not read yet arrive merged); the last one is finished.

        `params.output_kind` picks what they hold. CUMULATIVE (the default): each
        completion's `text`, `token_ids` and `logprobs` so far, `delta_text` and
        `delta_token_ids` new since the previous output. DELTA: only what is new since
        the previous output (text, token ids, logprobs), with `num_generated_tokens`
        and finish reasons as they stand; no step copies what earlier steps generated."""
        self._raise_if_dead()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        token_ids = await self.tokenize(prompt)
        stream = OutputStream()
        self.core.add_request(request_id, token_ids, params, prompt=prompt if isinstance(prompt, str) else None,
                              priority=priority, cache_salt=cache_salt)
        self._streams[request_id] = stream
        self._wake()
        finished = False
        try:
            while not finished:
                item = await stream.get()
                finished = item.finished
                if item.error is not None:
                    raise RequestFailedError(item.error)
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.core.abort(request_id)
                self._wake()

    async def abort(self, request_id: str) -> None:
        self.core.abort(request_id)
        self._wake()

    def stats(self) -> dict[str, float | int]:
        return self.core.stats()

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        self._step_thread.shutdown(wait=True)
        self._tokenize_pool.shutdown(wait=True)

    # -- the step loop ------------------------------------------------------------
    def _wake(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            if self.dead_error is None:
                self._loop_task = asyncio.get_running_loop().create_task(self._run_steps())
        self._has_work.set()

    async def _run_steps(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.core.has_unfinished():
                self._has_work.clear()
                await self._has_work.wait()
                continue
            try:
                outputs = await loop.run_in_executor(self._step_thread, self.core.step)
            except Exception as error:  # the engine cannot continue: fail every stream
                logger.exception("engine step failed")
                self._die(error)
                return
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    stream.put(output)
            await asyncio.sleep(0)  # let consumers run between steps

    def _die(self, error: BaseException) -> None:
        self.dead_error = error
        self.died.set()
        dead = EngineDeadError(f"engine step failed: {type(error).__name__}: {error}")
        for stream in self._streams.values():
            stream.fail(dead)

    def _raise_if_dead(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"engine is dead: {self.dead_error}")
