"""EngineProcess: the engine core in a child process, its streams in this one.

In one process, the step thread and the event loop share one interpreter lock:
at saturation every step's host work (scheduling, output processing) waits
while the loop writes hundreds of SSE chunks, and the other way round. Here
the core runs in a spawned child that steps back to back, and this process
keeps only HTTP, tokenization and the streams.

Two one-way pipes: commands (add, abort, shutdown) go down, read by the child
between steps; each step's outputs come up as one message, with a stats
snapshot at most every `_STATS_INTERVAL_S`. Outputs travel without their
prompt (this process has it): unpickling 256 prompts of a few hundred token
ids took 4 ms a step, against 0.6 ms without. A reader thread here turns
messages into calls on the event loop. Requests are checked against the
engine's limits here before they are sent, so a bad one fails with the same
ValueError as in-process. The child failing (an exception, or dying outright)
fails every stream and marks the engine dead.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

from helix.engine import EngineStreams, freeze_startup_objects
from helix.engine_args import EngineArgs
from helix.engine_core import EngineCore, load_tokenizer
from helix.outputs import RequestOutput
from helix.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_STATS_INTERVAL_S = 0.5
_START_TIMEOUT_S = 600.0

# Applied to the core in the child once it is built (benchmarks install stubs with
# it); must be importable by name, since the child is spawned.
CoreHook = Callable[[EngineCore], None]


class EngineProcess(EngineStreams):
    def __init__(self, model: str | None = None, core_hook: CoreHook | None = None, **kwargs: Any):
        args = EngineArgs.from_kwargs(model=model, **kwargs)
        context = multiprocessing.get_context("spawn")  # a forked CUDA context is unusable
        commands_out, commands_in = context.Pipe(duplex=False)
        outputs_out, outputs_in = context.Pipe(duplex=False)
        self._process = context.Process(target=_run_core, args=(args, core_hook, commands_out, outputs_in),
                                        name="helix-engine", daemon=True)
        self._process.start()
        commands_out.close()
        outputs_in.close()
        self._commands = commands_in
        self._outputs = outputs_out
        try:
            ready = _first_message(self._outputs, self._process)
            super().__init__(load_tokenizer(Path(ready["tokenizer_dir"]) if ready["tokenizer_dir"] else None),
                             ready["limits"])
        except BaseException:
            self._process.kill()
            raise
        self._stats: dict[str, float | int] = ready["stats"]
        self._prompts: dict[str, tuple[str | None, list[int]]] = {}  # request id -> (text, token ids)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sends: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        # Sent from a thread: a full pipe (the child busy in a step) must not block the loop.
        self._sender = threading.Thread(target=self._send_commands, name="helix-engine-send", daemon=True)
        self._reader = threading.Thread(target=self._read_outputs, name="helix-engine-read", daemon=True)
        self._sender.start()

    def stats(self) -> dict[str, float | int]:
        """The child's latest snapshot (at most `_STATS_INTERVAL_S` old while it steps)."""
        return self._stats

    async def shutdown(self) -> None:
        self._sends.put(("shutdown", None))
        self._sends.put(None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._process.join, 60.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._reader.is_alive():  # it ends at the child's last message or end of file
            await loop.run_in_executor(None, self._reader.join)
        self._commands.close()
        self._outputs.close()
        self._tokenize_pool.shutdown(wait=True)

    def _submit(self, request_id: str, token_ids: list[int], params: SamplingParams, prompt: str | None,
                priority: int, cache_salt: str | None) -> None:
        self.limits.check(token_ids, params)  # here, so a bad request fails before anything is sent
        self._start_reading()
        self._prompts[request_id] = (prompt, token_ids)
        self._sends.put(("add", (request_id, token_ids, params, prompt, priority, cache_salt)))

    def _cancel(self, request_id: str) -> None:
        self._prompts.pop(request_id, None)
        self._sends.put(("abort", request_id))

    def _deliver_without_prompts(self, outputs: list[RequestOutput]) -> None:
        whole = []
        for output in outputs:
            prompt = self._prompts.pop(output.request_id, None) if output.finished else \
                self._prompts.get(output.request_id)
            if prompt is not None:
                whole.append(replace(output, prompt=prompt[0], prompt_token_ids=prompt[1]))
        self._deliver(whole)

    def _start_reading(self) -> None:
        """Outputs are handed to the loop of the first request; start reading then."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._reader.start()

    def _send_commands(self) -> None:
        while (command := self._sends.get()) is not None:
            try:
                self._commands.send(command)
            except OSError:  # the child is gone; the reader reports it
                return

    def _read_outputs(self) -> None:
        assert self._loop is not None
        while True:
            try:
                kind, payload = self._outputs.recv()
            except (EOFError, OSError):
                error: BaseException = RuntimeError(f"the engine process exited ({self._process.exitcode})")
                self._loop.call_soon_threadsafe(self._die_once, error)
                return
            if kind == "outputs":
                outputs, stats = payload
                if stats is not None:
                    self._stats = stats
                self._loop.call_soon_threadsafe(self._deliver_without_prompts, outputs)
            elif kind == "rejected":
                self._loop.call_soon_threadsafe(self._reject, *payload)
            elif kind == "dead":
                self._loop.call_soon_threadsafe(self._die_once, RuntimeError(payload))
                return
            elif kind == "stopped":
                return

    def _reject(self, request_id: str, message: str) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.fail(ValueError(message))

    def _die_once(self, error: BaseException) -> None:
        if self.dead_error is None:
            logger.error("engine process failed: %s", error)
            self._die(error)


def _first_message(outputs: Connection, process: Any) -> dict[str, Any]:
    """The child's "ready" message; raises what made it fail to start."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not outputs.poll(1.0):
        if not process.is_alive():
            raise RuntimeError(f"the engine process exited ({process.exitcode}) while starting")
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"the engine process did not start in {_START_TIMEOUT_S:.0f} s")
    kind, payload = outputs.recv()
    if kind == "failed":
        process.join()
        raise payload
    return payload


# -- the child ---------------------------------------------------------------------
def _run_core(args: EngineArgs, core_hook: CoreHook | None, commands: Connection, outputs: Connection) -> None:
    """Build the core and step it while there is work, between commands."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's shutdown stops this process
    try:
        core = EngineCore(args)
        if core_hook is not None:
            core_hook(core)
        freeze_startup_objects()
    except Exception as error:  # a bad option or model: the parent raises it
        outputs.send(("failed", error if _picklable(error) else RuntimeError(repr(error))))
        return
    outputs.send(("ready", {"limits": core.limits, "stats": core.stats(),
                            "tokenizer_dir": str(core.tokenizer_dir) if core.tokenizer is not None else None}))
    stats_sent = time.monotonic()
    while True:
        try:
            if not _apply_commands(core, commands, outputs):
                return
        except EOFError:  # the parent is gone
            return
        try:
            step_outputs = core.step()
        except Exception as error:  # the engine cannot continue: the parent fails every stream
            logger.exception("engine step failed")
            outputs.send(("dead", f"{type(error).__name__}: {error}"))
            return
        now = time.monotonic()
        stats = None
        if now - stats_sent >= _STATS_INTERVAL_S or not core.has_unfinished():
            stats, stats_sent = core.stats(), now
        if step_outputs or stats is not None:
            slim = [replace(output, prompt=None, prompt_token_ids=[]) for output in step_outputs]
            outputs.send(("outputs", (slim, stats)))


def _apply_commands(core: EngineCore, commands: Connection, outputs: Connection) -> bool:
    """Idle: wait for a command; busy: take the ones that have arrived. False: shut down."""
    while commands.poll(None if not core.has_unfinished() else 0):
        kind, payload = commands.recv()
        if kind == "shutdown":
            outputs.send(("stopped", None))
            return False
        if kind == "abort":
            core.abort(payload)
            continue
        request_id, token_ids, params, prompt, priority, cache_salt = payload
        try:
            core.add_request(request_id, token_ids, params, prompt=prompt, priority=priority, cache_salt=cache_salt)
        except ValueError as error:  # checked by the parent already; a race (a reused id) ends here
            outputs.send(("rejected", (request_id, str(error))))
    return True


def _picklable(error: BaseException) -> bool:
    try:
        pickle.dumps(error)
    except Exception:
        return False
    return True
