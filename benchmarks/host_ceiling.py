"""The host's ceiling: tokens per second when the model costs nothing.

The runner is replaced by a stub that "samples" a fixed token for every
request at once, so what remains is Helix's own Python: scheduling, block
accounting, output processing, and for the served figure the asyncio
streams, HTTP and SSE. Offline (`LLM.generate`) and served (`helix serve`'s
app in a child process, driven by the load client) run the same requests.
A GPU run whose throughput nears these figures is host-bound.

    PYTHONPATH=. python3 benchmarks/host_ceiling.py [--requests 256] [--output-len 256] [--engine-process]
        [--num-scheduler-steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.suite import helix_offline, served
from helix import LLM, SamplingParams
from helix.engine import AsyncEngine, EngineStreams
from helix.engine_core import EngineCore
from helix.engine_process import EngineProcess
from helix.engine_args import embedded_model_path
from helix.scheduler.outputs import ModelOutput, SchedulerOutput

_STUB_TOKEN = 7


def stub_launch(step: SchedulerOutput) -> Callable[[], ModelOutput]:
    """The runner's contract without a model: a token for every request that samples
    (a multi-step's request: one per step)."""
    output = ModelOutput(sampled={item.request.request_id: [_STUB_TOKEN] * item.num_steps
                                  for item in step.scheduled if item.samples})
    return lambda: output


def install_stub(core: EngineCore) -> None:
    core.runner.launch = stub_launch


def engine_options(max_num_seqs: int, num_scheduler_steps: int = 1) -> dict[str, Any]:
    return dict(device="cpu", num_kv_blocks=32768, max_num_seqs=max_num_seqs, max_num_batched_tokens=16384,
                speculative_method=None, num_scheduler_steps=num_scheduler_steps)


def offline(prompts: list[list[int]], output_len: int, num_scheduler_steps: int = 1) -> float:
    llm = LLM(embedded_model_path("target"), **engine_options(len(prompts), num_scheduler_steps))
    llm.engine.runner.launch = stub_launch
    params = SamplingParams(max_tokens=output_len, ignore_eos=True)
    started = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return len(prompts) * output_len / (time.perf_counter() - started)


async def serve_stub(port: int, max_num_seqs: int, engine_process: bool, num_scheduler_steps: int) -> None:
    from helix.frontend.server import serve
    from helix.frontend.state import ServerConfig

    engine: EngineStreams
    options = engine_options(max_num_seqs, num_scheduler_steps)
    if engine_process:
        engine = EngineProcess(embedded_model_path("target"), core_hook=install_stub, **options)
    else:
        engine = AsyncEngine(embedded_model_path("target"), **options)
        install_stub(engine.core)
    await serve(engine, ServerConfig(served_model_name="stub"), "127.0.0.1", port, log_interval_s=0.0)


def served_rate(prompts: list[list[int]], output_len: int, engine_process: bool = False,
                num_scheduler_steps: int = 1) -> dict[str, Any]:
    port = served.free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--requests", str(len(prompts)),
               "--num-scheduler-steps", str(num_scheduler_steps)]
    if engine_process:
        command.append("--engine-process")
    with served.ServerProcess(command, port) as server, tempfile.TemporaryDirectory() as work:
        dataset = Path(work) / "prompts.jsonl"
        served.write_prompts(prompts, output_len, dataset)
        return served.run_rate(server.base_url, math.inf, len(prompts), dataset, Path(work))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--engine-process", action="store_true", help="Serve with the engine core in a child process.")
    parser.add_argument("--num-scheduler-steps", type=int, default=1, help="The engine's multi-step setting.")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve is not None:
        try:  # as `helix serve` runs
            import uvloop
        except ImportError:
            asyncio.run(serve_stub(args.serve, args.requests, args.engine_process, args.num_scheduler_steps))
        else:
            uvloop.run(serve_stub(args.serve, args.requests, args.engine_process, args.num_scheduler_steps))
        return
    prompts = helix_offline.throughput_requests(args.requests, 128, 512, 4096)
    offline_tok_s = offline(prompts, args.output_len, args.num_scheduler_steps)
    result = served_rate(prompts, args.output_len, args.engine_process, args.num_scheduler_steps)
    print(json.dumps({"requests": args.requests, "output_len": args.output_len, "engine_process": args.engine_process,
                      "num_scheduler_steps": args.num_scheduler_steps,
                      "offline_tok_s": round(offline_tok_s), "served_tok_s": round(result["output_throughput"]),
                      "served_median_tpot_ms": round(result["median_tpot_ms"], 2)}))


if __name__ == "__main__":
    main()
