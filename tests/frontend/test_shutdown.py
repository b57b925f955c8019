"""Graceful shutdown of a real `helix serve` process: SIGTERM stops admission
(503), lets in-flight requests finish up to --shutdown-timeout, aborts the
rest, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, port: int, shutdown_timeout: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "helix.cli", "serve", str(model_dir), "--port", str(port),
               "--shutdown-timeout", str(shutdown_timeout), "--num-kv-blocks", "256", "--block-size", "4",
               "--served-model-name", "tiny", "--log-interval", "0"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_healthy(http: aiohttp.ClientSession, base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            async with http.get(f"{base}/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("server did not become healthy")


async def stream_completion(http: aiohttp.ClientSession, base: str, max_tokens: int, n: int,
                            first_chunk: asyncio.Event) -> tuple[str | None, bool]:
    """(finish_reason, saw [DONE]) of a streamed completion."""
    body = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": max_tokens, "n": n, "temperature": 0,
            "ignore_eos": True, "stream": True}
    finish_reason, done = None, False
    try:
        async with http.post(f"{base}/v1/completions", json=body) as response:
            async for line in response.content:
                text = line.decode().strip()
                if text == "data: [DONE]":
                    done = True
                elif text.startswith("data: "):
                    first_chunk.set()
                    finish_reason = json.loads(text[6:])["choices"][0]["finish_reason"] or finish_reason
    except aiohttp.ClientError:
        pass  # the server went away mid-stream
    return finish_reason, done


# (shutdown timeout, n): a 480-token completion finishes within a long timeout
# (and is still running 0.1 s after the signal, when a new request must get 503);
# eight of them (several seconds of work here) cannot finish in 0.3 s.
@pytest.mark.parametrize("shutdown_timeout, n, finishes", [(60.0, 1, True), (0.3, 8, False)])
async def test_sigterm_drains_then_exits_zero(tiny_model_dirs: dict[str, Path], shutdown_timeout: float, n: int,
                                              finishes: bool) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(tiny_model_dirs["llama"], port, shutdown_timeout)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, base, process)
            first_chunk = asyncio.Event()
            in_flight = asyncio.create_task(stream_completion(http, base, 480, n, first_chunk))
            await asyncio.wait_for(first_chunk.wait(), 60)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            if finishes:  # while draining, new requests are refused
                body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
                async with http.post(f"{base}/v1/completions", json=body) as response:
                    assert response.status == 503 and "Retry-After" in response.headers
            finish_reason, done = await asyncio.wait_for(in_flight, 120)
        assert process.wait(timeout=60) == 0
        if finishes:
            assert (finish_reason, done) == ("length", True)
        else:
            assert not done
    finally:
        if process.poll() is None:
            process.kill()
