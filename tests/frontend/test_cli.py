"""The `helix` command line: generated engine flags, `generate`, and `serve`'s server loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from helix import LLM, EngineArgs, SamplingParams
from helix.cli import build_parser, engine_kwargs, main, server_config
from helix.frontend.server import serve
from helix.frontend.state import ServerConfig
from helix.frontend.status_log import status_line
from tests.frontend.conftest import make_engine, wait_for


def test_serve_help_lists_every_engine_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(EngineArgs):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        if isinstance(field.default, bool):
            assert "--no-" + field.name.replace("_", "-") in text
    for flag in ("--host", "--port", "--api-key", "--served-model-name", "--max-queued-requests", "--chat-template",
                 "--max-body-bytes", "--log-interval", "--draft-model", "--num-speculative-tokens"):
        assert flag in text, flag
    assert "<|assistant|>" in text  # the default chat template is documented


def test_engine_flags_become_engine_args() -> None:
    args = build_parser().parse_args(["serve", "some/model", "--num-kv-blocks", "12", "--no-enable-prefix-caching",
                                      "--max-model-len", "64", "--gpu-memory-utilization", "0.5"])
    kwargs = engine_kwargs(args)
    assert set(kwargs) == {f.name for f in dataclasses.fields(EngineArgs)}
    engine_args = EngineArgs.from_kwargs(**{**kwargs, "model": args.model_arg})
    assert (engine_args.num_kv_blocks, engine_args.enable_prefix_caching, engine_args.max_model_len) == (12, False, 64)
    assert engine_args.gpu_memory_utilization == 0.5 and engine_args.block_size == EngineArgs().block_size


def test_server_flags_become_the_server_config(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["serve", "--allowed-origin", "http://a.example", "--allowed-origin", "*",
                                      "some/model", "--tool-call-parser", "hermes", "--api-key", "k"])
    config = server_config(args)
    assert config.allowed_origins == ("http://a.example", "*") and config.tool_call_parser == "hermes"
    assert config.api_key == "k" and config.served_model_name == "some/model"
    default = server_config(build_parser().parse_args(["serve"]))
    assert default.allowed_origins == () and default.tool_call_parser is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tool-call-parser", "llama4"])
    assert "--tool-call-parser" in capsys.readouterr().err


def test_a_backlog_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--backlog", "0"])
    assert "--backlog" in capsys.readouterr().err


def test_two_different_models_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "a", "--model", "b"])
    assert "two models" in capsys.readouterr().err


def test_speculation_flags_reach_the_engine() -> None:
    args = build_parser().parse_args(["serve", "m", "--draft-model", "d", "--num-speculative-tokens", "6",
                                      "--speculation-mode", "fixed"])
    engine_args = EngineArgs(**engine_kwargs(args))
    assert (engine_args.draft_model, engine_args.num_speculative_tokens) == ("d", 6)
    assert engine_args.speculation_mode == "fixed"


def test_generate_prints_the_completion(tiny_model_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model = str(tiny_model_dirs["llama"])
    options = ["--model", model, "--num-kv-blocks", "64", "--block-size", "4"]
    assert main(["generate", "The quick brown", "--max-tokens", "6", "--temperature", "0", *options]) == 0
    printed = capsys.readouterr().out
    llm = LLM(model, num_kv_blocks=64, block_size=4)
    expected = llm.generate("The quick brown", SamplingParams(max_tokens=6, temperature=0.0), use_tqdm=False)
    assert printed == expected[0].outputs[0].text + "\n"


def test_status_line_only_when_something_happened() -> None:
    idle = dict(prompt_tokens=10, generation_tokens=20, running=0, waiting=0, swapped=0, kv_cache_usage=0.0)
    assert status_line(idle, idle, 10.0) is None
    busy = dict(idle, prompt_tokens=30, generation_tokens=70, running=2, waiting=1, kv_cache_usage=0.25)
    assert status_line(idle, busy, 10.0) == ("prompt 2.0 tok/s, generation 5.0 tok/s, running 2, waiting 1, "
                                             "swapped 0, KV usage 25.0%")
    speculating = dict(busy, spec_draft_tokens=40, spec_accepted_tokens=30)
    assert status_line(dict(idle, spec_draft_tokens=0, spec_accepted_tokens=0), speculating, 10.0).endswith(
        ", acceptance 75.0%")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def is_healthy(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(base + "/health") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def test_serve_runs_until_cancelled(tiny_model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    engine = make_engine(tiny_model_dirs["llama"], num_kv_blocks=64)
    caplog.set_level(logging.INFO, logger="helix.serve")
    task = asyncio.create_task(serve(engine, ServerConfig("tiny"), "127.0.0.1", port, log_interval_s=0.05))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        assert await wait_for(lambda: is_healthy(http, base))
        async with http.post(base + "/v1/completions", json={"prompt": "hi", "max_tokens": 40,
                                                             "ignore_eos": True}) as response:
            assert response.status == 200
        assert await wait_for(lambda: _logged(caplog, "generation"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(RuntimeError, match="shutdown"):  # serve shut the engine down
        await engine.tokenize("hi")


def _connect_burst(port: int, count: int, within_s: float) -> int:
    """Open `count` connections at once; how many the kernel completed within `within_s`."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        pending, connected = set(sockets), 0
        deadline = time.monotonic() + within_s
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], max(0.0, deadline - time.monotonic()))
            for sock in writable:
                pending.discard(sock)
                connected += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        return connected
    finally:
        for sock in sockets:
            sock.close()


async def test_a_burst_of_connections_queues_while_the_loop_is_busy(tiny_model_dirs: dict[str, Path]) -> None:
    """With the event loop busy, the kernel still completes every connection of
    a burst beyond aiohttp's default queue of 128 (an overflowing SYN is dropped
    and retried only after a second)."""
    port = free_port()
    engine = make_engine(tiny_model_dirs["llama"], num_kv_blocks=64)
    task = asyncio.create_task(serve(engine, ServerConfig("tiny"), "127.0.0.1", port, log_interval_s=0))
    async with aiohttp.ClientSession() as http:
        assert await wait_for(lambda: is_healthy(http, f"http://127.0.0.1:{port}"))
    with ThreadPoolExecutor(1) as pool:
        burst = pool.submit(_connect_burst, port, 400, 0.9)
        time.sleep(1.0)  # blocks the loop: nothing is accepted meanwhile
        assert burst.result() == 400
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


async def test_serve_exits_1_when_the_engine_dies(tiny_model_dirs: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    engine = make_engine(tiny_model_dirs["llama"], num_kv_blocks=64)

    def broken_step(_step):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(engine.core.runner, "launch", broken_step)
    task = asyncio.create_task(serve(engine, ServerConfig("tiny"), "127.0.0.1", port, log_interval_s=0))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        assert await wait_for(lambda: is_healthy(http, base))
        async with http.post(base + "/v1/completions", json={"prompt": "hi", "max_tokens": 5}) as response:
            assert response.status == 503
            assert "injected fault" in (await response.json())["error"]["message"]
    assert await asyncio.wait_for(task, 30) == 1
