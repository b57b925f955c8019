"""The `helix` command: `helix serve` (OpenAI-compatible server) and `helix generate` (one offline completion).

Engine flags are generated from EngineArgs, so every engine option is a flag
with the same name (kebab-case), type, default and help.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Coroutine, Sequence
from typing import Any

from helix.engine_args import EngineArgs

EMBEDDED_MODEL_NAME = "helix-tiny"  # served name when no model is given


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args, parser))
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helix", description="Helix: a serving engine for Llama-family models.",
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(commands)
    _add_generate(commands)
    return parser


# -- engine flags -------------------------------------------------------------------
def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine options")
    hints = typing.get_type_hints(EngineArgs)
    for field in dataclasses.fields(EngineArgs):
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"].replace("%", "%%")
        kind = _flag_type(field.name, hints[field.name])
        if kind is bool:
            action = group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                        default=field.default, help=help_text)
        else:
            action = group.add_argument(flag, dest=field.name, type=kind, default=field.default,
                                        metavar=kind.__name__.upper(), help=help_text)
        if "%(default)" not in (action.help or ""):  # some Pythons' BooleanOptionalAction add it themselves
            action.help = f"{action.help} (default: %(default)s)"


def _flag_type(name: str, hint: Any) -> type:
    """int, float, str or bool; `X | None` takes an X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = options[0] if len(options) == 1 else None
    if hint not in (int, float, str, bool):
        raise TypeError(f"EngineArgs.{name}: no command-line flag for type {hint!r}")
    return hint


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(EngineArgs)}


# -- helix serve ------------------------------------------------------------------------
def _add_serve(commands: Any) -> None:
    from helix.frontend.chat_template import DEFAULT_CHAT_TEMPLATE
    from helix.frontend.state import DEFAULT_BACKLOG, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUED_REQUESTS
    from helix.frontend.tool_calls import TOOL_CALL_PARSERS

    serve = commands.add_parser("serve", help="Serve a model over an OpenAI-compatible HTTP API.",
                                description="Serve a model over an OpenAI-compatible HTTP API.", allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Default chat template (for tokenizers without one):\n"
                                       + DEFAULT_CHAT_TEMPLATE)
    serve.add_argument("model_arg", nargs="?", metavar="MODEL", default=None,
                       help="Hugging Face directory or cached hub id (same as --model); omitted: the embedded "
                            f"{EMBEDDED_MODEL_NAME} model.")
    server = serve.add_argument_group("server options")
    server.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: %(default)s).")
    server.add_argument("--port", type=int, default=8000, help="Port to listen on (default: %(default)s).")
    server.add_argument("--api-key", default=None,
                        help="Require `Authorization: Bearer KEY` on every route but /health.")
    server.add_argument("--allowed-origin", action="append", dest="allowed_origins", default=[], metavar="ORIGIN",
                        help="Let web pages from this origin (e.g. http://localhost:3000; * for any) call the API "
                             "from a browser (CORS); repeat for more. Default: none.")
    server.add_argument("--tool-call-parser", choices=TOOL_CALL_PARSERS, default=None,
                        help="Read tool calls from what the model writes, so tool_choice \"auto\" (the default "
                             "with tools) works: hermes for <tool_call>{...}</tool_call> (Qwen2.5, Qwen3, Hermes), "
                             "llama3_json for Llama 3.1+'s {\"name\": ..., \"parameters\": ...}. Without it, only "
                             "forced calls (\"required\", a named function) are served.")
    server.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="Model name clients must send (default: the model path or name as given).")
    server.add_argument("--max-queued-requests", type=int, default=DEFAULT_MAX_QUEUED_REQUESTS, metavar="N",
                        help="Generation requests in flight before new ones get 503 with Retry-After "
                             "(default: %(default)s).")
    server.add_argument("--chat-template", default=None, metavar="FILE",
                        help="Jinja chat template file; overrides the tokenizer's own template. Without either, "
                             "a role-tagged default is used: `<|role|>\\ncontent\\n` per message, then "
                             "`<|assistant|>\\n` (shown below).")
    server.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                        help="Largest request body; larger ones get 413 (default: %(default)s).")
    server.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                        help="On SIGTERM, seconds in-flight requests get to finish before they are aborted "
                             "(new requests get 503 meanwhile); then the process exits 0 (default: %(default)s).")
    server.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, metavar="N",
                        help="Connections the kernel queues until the server accepts them; a burst of new "
                             "connections beyond it waits a second to retry (default: %(default)s).")
    server.add_argument("--log-interval", type=float, default=10.0, metavar="S",
                        help="Seconds between status log lines, written only when something happened; "
                             "0 turns them off (default: %(default)s).")
    server.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                        help="Run the engine core in a child process, so its steps and the HTTP server do not "
                             "share one interpreter lock (default: on; --no-engine-process keeps one process, "
                             "which can be faster on hosts with very few CPU cores).")
    server.add_argument("--benchmark-mode", action="store_true",
                        help="Allow benchmark-only engine options (--spec-synthetic-acceptance), whose outputs "
                             "are not the model's.")
    add_engine_flags(serve)
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from helix.frontend.chat_template import ChatTemplate

    if args.model_arg is not None and args.model is not None and args.model_arg != args.model:
        parser.error(f"two models given: MODEL {args.model_arg!r} and --model {args.model!r}")
    args.model = args.model or args.model_arg
    if args.spec_synthetic_acceptance is not None and not args.benchmark_mode:
        parser.error("--spec-synthetic-acceptance is benchmark-only (outputs are not the model's); "
                     "add --benchmark-mode to allow it")
    if args.backlog < 1:
        parser.error(f"--backlog: must be at least 1, got {args.backlog}")
    if args.chat_template is not None:
        try:
            ChatTemplate.resolve(None, args.chat_template)
        except (OSError, ValueError) as error:
            parser.error(f"--chat-template {args.chat_template}: {error}")
    return _run_async(_serve(engine_kwargs(args), args.engine_process, server_config(args), args.host, args.port,
                             args.log_interval, args.shutdown_timeout, args.backlog))


def server_config(args: argparse.Namespace) -> Any:
    """The ServerConfig of parsed `helix serve` arguments."""
    from helix.frontend.state import ServerConfig

    return ServerConfig(served_model_name=args.served_model_name or args.model or args.model_arg
                        or EMBEDDED_MODEL_NAME,
                        api_key=args.api_key, max_queued_requests=args.max_queued_requests,
                        chat_template_file=args.chat_template, max_body_bytes=args.max_body_bytes,
                        allowed_origins=tuple(args.allowed_origins), tool_call_parser=args.tool_call_parser)


async def _serve(kwargs: dict[str, Any], engine_process: bool, config: Any, host: str, port: int,
                 log_interval_s: float, shutdown_timeout_s: float, backlog: int) -> int:
    from helix.engine import AsyncEngine, freeze_startup_objects
    from helix.engine_process import EngineProcess
    from helix.frontend.server import serve

    engine = EngineProcess(**kwargs) if engine_process else AsyncEngine(**kwargs)
    freeze_startup_objects()
    return await serve(engine, config, host, port, log_interval_s, shutdown_timeout_s, backlog)


def _run_async(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# -- helix generate ---------------------------------------------------------------------
def _add_generate(commands: Any) -> None:
    generate = commands.add_parser("generate", help="Complete one prompt offline and print the text.",
                                   description="Complete one prompt offline and print the text.",
                                   allow_abbrev=False)
    generate.add_argument("prompt", metavar="PROMPT", help="Prompt text.")
    generate.add_argument("--max-tokens", type=int, default=16, metavar="N",
                          help="Most tokens to generate (default: %(default)s).")
    generate.add_argument("--temperature", type=float, default=1.0, metavar="T",
                          help="Sampling temperature; 0 is greedy (default: %(default)s).")
    add_engine_flags(generate)
    generate.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from helix import LLM, SamplingParams

    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    except ValueError as error:
        parser.error(str(error))
    llm = LLM(**engine_kwargs(args))
    try:
        output = llm.generate(args.prompt, params, use_tqdm=False)[0]
    except ValueError as error:
        print(f"helix generate: error: {error}", file=sys.stderr)
        return 1
    print(output.outputs[0].text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
