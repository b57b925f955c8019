"""Per-request async streams over one EngineCore.

`EngineStreams` is the part every front shares: tokenizing, the engine's
request limits, one stream per request, failing them all when the engine
dies. `AsyncEngine` runs the core in this process: steps run back to
back on one step thread, which owns the EngineCore, so the event loop (and the
HTTP server on it) keeps answering while the model runs, and the next step
does not wait for the loop to hand out the last one's outputs. Each step's
outputs reach the loop in one thread-safe call; a stream whose consumer has
not read its last output yet merges the new one into it, so a busy loop writes
several steps' tokens at once instead of falling behind. Tokenization runs on
a separate small pool. A request's stream ends when it finishes, errors or is
aborted; a consumer that stops iterating (a client that disconnected) aborts
its request, which frees its blocks.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, AsyncIterator

from helix.engine_args import EngineArgs
from helix.engine_core import EngineCore, prompt_token_ids
from helix.output_stream import OutputStream
from helix.outputs import RequestOutput
from helix.request_limits import RequestLimits
from helix.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> None:
    """In a process that serves one engine until it exits, freeze what start-up
    built (modules, tokenizer, compiled kernels) out of the cyclic collector's
    sight: a full collection would otherwise walk all of it (~150 ms with the
    tiny model on CPU) in the middle of a step. Not for engines that are built
    and dropped in one process: an engine holds reference cycles, and frozen
    cycles are never collected."""
    gc.freeze()


class EngineDeadError(RuntimeError):
    """The step loop failed; the engine serves no more requests."""


class RequestFailedError(RuntimeError):
    """The engine failed this one request (e.g. out of memory in its step) and
    carries on serving the others."""


class EngineStreams:
    """Per-request async streams over an engine that runs elsewhere (a thread, a
    process). Subclasses hand requests to it (`_submit`, `_cancel`) and its
    outputs back in (`_deliver`, on the event loop), and `_die` when it fails."""

    def __init__(self, tokenizer: Any, limits: RequestLimits):
        self._tokenizer = tokenizer
        self.limits = limits
        self._tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="helix-tokenize")
        self._streams: dict[str, OutputStream] = {}
        self._ids = itertools.count()
        self.dead_error: BaseException | None = None
        self.died = asyncio.Event()  # set once the engine has failed

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

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
        self._submit(request_id, token_ids, params, prompt if isinstance(prompt, str) else None, priority,
                     cache_salt)
        stream = OutputStream()  # outputs reach it on this loop, so none can come before this
        self._streams[request_id] = stream
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
                self._cancel(request_id)

    async def abort(self, request_id: str) -> None:
        self._cancel(request_id)

    def stats(self) -> dict[str, float | int]:
        raise NotImplementedError

    async def shutdown(self) -> None:
        raise NotImplementedError

    def _submit(self, request_id: str, token_ids: list[int], params: SamplingParams, prompt: str | None,
                priority: int, cache_salt: str | None) -> None:
        """Hand the request to the engine; raises ValueError (`limits`) for one it refuses."""
        raise NotImplementedError

    def _cancel(self, request_id: str) -> None:
        raise NotImplementedError

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)

    def _die(self, error: BaseException) -> None:
        self.dead_error = error
        self.died.set()
        dead = EngineDeadError(f"engine step failed: {type(error).__name__}: {error}")
        for stream in self._streams.values():
            stream.fail(dead)

    def _raise_if_dead(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"engine is dead: {self.dead_error}")


class AsyncEngine(EngineStreams):
    """The engine core on a step thread of this process."""

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
        super().__init__(self.core.tokenizer, self.core.limits)
        self._has_work = threading.Event()  # set when requests are added or aborted
        self._stopping = threading.Event()
        self._steps: Future[None] | None = None  # the step loop, running on the step thread

    def stats(self) -> dict[str, float | int]:
        return self.core.stats()

    async def shutdown(self) -> None:
        self._stopping.set()
        self._has_work.set()
        self._step_thread.shutdown(wait=True)
        self._tokenize_pool.shutdown(wait=True)

    def _submit(self, request_id: str, token_ids: list[int], params: SamplingParams, prompt: str | None,
                priority: int, cache_salt: str | None) -> None:
        self.core.add_request(request_id, token_ids, params, prompt=prompt, priority=priority, cache_salt=cache_salt)
        self._wake()

    def _cancel(self, request_id: str) -> None:
        self.core.abort(request_id)
        self._wake()

    # -- the step loop ------------------------------------------------------------
    def _wake(self) -> None:
        if self._steps is None and self.dead_error is None:
            self._steps = self._step_thread.submit(self._run_steps, asyncio.get_running_loop())
        self._has_work.set()

    def _run_steps(self, loop: asyncio.AbstractEventLoop) -> None:
        """Step while there is work, handing each step's outputs to the loop (step thread)."""
        while not self._stopping.is_set():
            if not self.core.has_unfinished():
                self._has_work.wait()
                self._has_work.clear()
                continue
            try:
                outputs = self.core.step()
            except Exception as error:  # the engine cannot continue: fail every stream
                logger.exception("engine step failed")
                loop.call_soon_threadsafe(self._die, error)
                return
            if outputs:
                loop.call_soon_threadsafe(self._deliver, outputs)
