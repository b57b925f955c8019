"""`python -m benchmarks.load`: load an OpenAI-compatible server and report latency and throughput.

    python -m benchmarks.load --base-url http://127.0.0.1:8000 --num-prompts 200 \\
        --input-len 512 --output-len 128 --request-rate 8 --result-file out.json

Only /v1/models and /v1/completions or /v1/chat/completions (streaming, unless
--no-stream) are needed; /tokenize (exact token counts) and /metrics
(server-side figures) are used when the server has them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import aiohttp

from benchmarks.load import plot, report, scrape
from benchmarks.load.arrivals import check as check_arrivals
from benchmarks.load.client import RequestOptions, Target
from benchmarks.load.datasets import DatasetOptions, SampleRequest, load_requests
from benchmarks.load.metrics import parse_slos, summarize
from benchmarks.load.runner import LoadSchedule, RunOutput, check_schedule, run_load
from benchmarks.load.server_api import ServerTokenizer, auth_headers, list_models, normalize_base_url

DEFAULT_TIMEOUT_S = 6 * 60 * 60


def parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a request rate (a number or inf)") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"request rate must be positive, got {text!r}")
    return rate


def parse_rates(text: str) -> list[float]:
    return [parse_rate(part.strip()) for part in text.split(",") if part.strip()]


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    server = parser.add_argument_group("server")
    server.add_argument("--base-url", required=True, help="Server root, e.g. http://127.0.0.1:8000 (a /v1 suffix "
                        "is dropped).")
    server.add_argument("--endpoint", choices=("completions", "chat"), default="completions",
                        help="/v1/completions or /v1/chat/completions (default: %(default)s).")
    server.add_argument("--no-stream", action="store_true", help="Ask for whole responses instead of streams "
                        "(TTFT is then the end-to-end latency, and there is no ITL).")
    server.add_argument("--model", help="Model name to send (default: the first id of GET /v1/models).")
    server.add_argument("--api-key", help="Bearer token (default: $OPENAI_API_KEY if set).")
    server.add_argument("--request-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="Seconds before one request is abandoned (default: %(default)s).")

    data = parser.add_argument_group("prompts")
    data.add_argument("--dataset", choices=("random", "sharegpt", "jsonl"), default="random",
                      help="Where prompts come from (default: %(default)s).")
    data.add_argument("--dataset-path", help="ShareGPT JSON file, or JSONL of {\"prompt\": ..., \"max_tokens\": ...}.")
    data.add_argument("--num-prompts", type=int, default=1000, help="Requests to send; with --duration, the "
                      "number of distinct prompts reused in turn (default: %(default)s).")
    data.add_argument("--input-len", type=int, help="Random dataset: prompt tokens (default: 1024).")
    data.add_argument("--output-len", type=int, help="Tokens to generate (default: 128 for random prompts, the "
                      "answer's length for ShareGPT, max_tokens for JSONL).")
    data.add_argument("--range-ratio", type=float, default=0.0, help="Random lengths are uniform in "
                      "[len*(1-r), len*(1+r)] (default: %(default)s).")
    data.add_argument("--vocab-size", type=int, help="Random completions prompts: draw token ids from "
                      "[0, N) (default: ids of common words as the server's /tokenize gives them; random words "
                      "when the server has no /tokenize).")
    data.add_argument("--seed", type=int, default=0, help="Seed of prompts, arrival times and "
                      "disconnects (default: %(default)s).")

    load = parser.add_argument_group("load")
    load.add_argument("--request-rate", type=parse_rate, default=math.inf,
                      help="Requests per second, or inf to send all at once (default: inf).")
    load.add_argument("--burstiness", type=float, default=1.0, help="Shape of the gamma-distributed gaps (mean "
                      "1/rate); 1 is Poisson, lower is burstier (default: %(default)s).")
    load.add_argument("--max-concurrency", type=int, help="At most this many requests in flight.")
    load.add_argument("--duration", type=float, help="Stop sending after this many seconds (prompts are reused).")
    load.add_argument("--sweep", type=parse_rates, metavar="R1,R2,...",
                      help="One run per request rate (overrides --request-rate).")
    load.add_argument("--disconnect-fraction", type=float, default=0.0, metavar="F",
                      help="Abandon each request with probability F in [0, 1), picked by --seed: the client "
                      "closes its connection at a random moment; abandoned requests count as cancelled, neither "
                      "completed nor failed (default: %(default)s).")
    load.add_argument("--disconnect-max-delay", type=float, default=1.0, metavar="S",
                      help="An abandoned request is cancelled a uniform random [0, S) seconds after it was sent, "
                      "unless it finished first (default: %(default)s).")

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=float, default=0.0, help="(default: %(default)s)")
    sampling.add_argument("--ignore-eos", action="store_true", help="Generate exactly the requested tokens "
                          "(sends `ignore_eos`, which not every server accepts).")
    sampling.add_argument("--extra-body", type=parse_json_object, default={}, metavar="JSON",
                          help="JSON object merged into every request body.")

    output = parser.add_argument_group("output")
    output.add_argument("--goodput", nargs="+", metavar="METRIC:MS", help="SLOs for goodput, e.g. ttft:500 "
                        "tpot:50 e2el:10000: requests meeting all of them per second.")
    output.add_argument("--result-file", help="Write the result JSON here (with --sweep, one file per rate, "
                        "the rate appended to the name).")
    output.add_argument("--plot", help="Write a PNG: latency CDFs and throughput over time, or with --sweep "
                        "latency against throughput (needs matplotlib).")
    output.add_argument("--disable-tqdm", action="store_true", help="No progress bar.")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.slos = parse_slos(args.goodput or [])
        args.rates = args.sweep or [args.request_rate]
        for rate in args.rates:
            check_arrivals(rate, args.burstiness)
            check_schedule(load_schedule(args, rate))
        for flag in ("num_prompts", "input_len", "output_len", "vocab_size"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
        if args.dataset != "random" and not args.dataset_path:
            raise ValueError(f"--dataset {args.dataset} needs --dataset-path")
        if not 0.0 <= args.range_ratio < 1.0:
            raise ValueError(f"--range-ratio must be in [0, 1), got {args.range_ratio}")
        if args.plot:
            plot.pyplot()  # fail now, not after the run
    except (ValueError, plot.PlotUnavailable) as error:
        parser.error(str(error))
    return args


def load_schedule(args: argparse.Namespace, rate: float) -> LoadSchedule:
    return LoadSchedule(rate, args.burstiness, args.max_concurrency, args.duration, args.seed,
                        args.disconnect_fraction, args.disconnect_max_delay)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Prepare prompts, run once per rate, report; the result dicts, one per rate."""
    base_url = normalize_base_url(args.base_url)
    headers = auth_headers(args.api_key or os.environ.get("OPENAI_API_KEY"))
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        model, max_model_len = await _resolve_model(session, base_url, headers, args.model)
        tokenizer = ServerTokenizer(session, base_url, headers, model)
        requests = await load_requests(DatasetOptions(
            kind=args.dataset, num_prompts=args.num_prompts, endpoint=args.endpoint, path=args.dataset_path,
            input_len=args.input_len, output_len=args.output_len, range_ratio=args.range_ratio,
            vocab_size=args.vocab_size, max_model_len=max_model_len, seed=args.seed), tokenizer)
        if not requests:
            raise ValueError("the dataset gave no usable prompts")
        counts = {True: "; lengths from /tokenize", False: "; lengths estimated (no /tokenize)", None: ""}
        _log(f"{len(requests)} prompts ({args.dataset}, {_prompt_form(requests)}{counts[tokenizer.available]}), "
             f"model {model!r}, {base_url}")
        target = Target(base_url, args.endpoint, model, headers)
        options = RequestOptions(args.temperature, args.ignore_eos, args.extra_body, stream=not args.no_stream)
        results = []
        for rate in args.rates:
            disconnects = (f", disconnecting {args.disconnect_fraction:g} of requests within "
                           f"{args.disconnect_max_delay:g} s" if args.disconnect_fraction else "")
            _log(f"request rate {report.format_rate(rate)}, burstiness {args.burstiness}, "
                 f"max concurrency {args.max_concurrency or 'unlimited'}{disconnects}")
            before = await scrape.scrape(session, base_url, headers)
            output = await run_load(session, target, requests, options, load_schedule(args, rate),
                                    progress=not args.disable_tqdm)
            after = await scrape.scrape(session, base_url, headers) if before is not None else None
            result = build_result(args, model, base_url, rate, output, scrape.summarize(before, after))
            report.print_summary(result)
            if args.result_file:
                path = report.rate_path(args.result_file, rate) if args.sweep else args.result_file
                report.write_json(result, path)
                _log(f"wrote {path}")
            if args.plot and not args.sweep:
                plot.plot_run(output.results, output.start, output.duration_s, args.plot,
                              title=f"{model} @ {report.format_rate(rate)} req/s")
                _log(f"wrote {args.plot}")
            results.append(result)
        if args.sweep:
            print(report.sweep_table(results), flush=True)
            if args.plot:
                plot.plot_sweep(results, args.plot, title=f"{model}: request-rate sweep")
                _log(f"wrote {args.plot}")
    return results


def build_result(args: argparse.Namespace, model: str, base_url: str, rate: float, output: RunOutput,
                 server_metrics: dict[str, Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if args.endpoint == "chat" else "openai",
        "endpoint": args.endpoint,
        "base_url": base_url,
        "model_id": model,
        "dataset": args.dataset,
        "num_prompts": len(output.results),
        "request_rate": rate if math.isfinite(rate) else "inf",
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "duration_limit": args.duration,
        "stream": not args.no_stream,
        "disconnect_fraction": args.disconnect_fraction,
        "disconnect_max_delay": args.disconnect_max_delay,
        "goodput_slos_ms": args.slos or None,
    }
    result.update(summarize(output.results, output.duration_s, args.slos, output.peak_concurrency))
    result["server_metrics"] = server_metrics
    return result


async def _resolve_model(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str],
                         model: str | None) -> tuple[str, int | None]:
    """The model to send and its context length when /v1/models tells it."""
    try:
        models = await list_models(session, base_url, headers)
    except RuntimeError:
        if model is None:
            raise
        return model, None
    if model is None:
        if not models:
            raise RuntimeError("GET /v1/models lists no model; pass --model")
        return models[0].id, models[0].max_model_len
    return model, next((m.max_model_len for m in models if m.id == model), None)


def _prompt_form(requests: Sequence[SampleRequest]) -> str:
    return "token ids" if isinstance(requests[0].prompt, list) else "text"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run(args))
    except (ValueError, RuntimeError, OSError, plot.PlotUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
