"""A real Helix server on 127.0.0.1 (free port) over the tiny Llama model, plus clients.

Every test module here runs on one package-wide event loop, so the engine and
the server are started once; servers with other settings share the engine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from helix.engine import AsyncEngine
from helix.frontend.server import build_app, make_runner
from helix.frontend.state import ServerConfig

MODEL_NAME = "tiny-llama"
LOOP = "package"


@dataclass
class Server:
    base_url: str
    engine: AsyncEngine

    def url(self, path: str) -> str:
        return self.base_url + path

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """Samples by name, with labels folded in as name{k=v}."""
        async with http.get(self.url("/metrics")) as response:
            assert response.status == 200
            text = await response.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


def make_engine(model_dir: Path, **overrides: Any) -> AsyncEngine:
    options: dict[str, Any] = dict(num_kv_blocks=256, block_size=4, check_invariants=True)
    return AsyncEngine(str(model_dir), **{**options, **overrides})


@asynccontextmanager
async def running_server(engine: AsyncEngine, **config: Any) -> AsyncIterator[Server]:
    app = build_app(engine, ServerConfig(served_model_name=MODEL_NAME, **config))
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield Server(f"http://{host}:{port}", engine)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope=LOOP, loop_scope=LOOP)
async def engine(tiny_model_dirs: dict[str, Path]) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(tiny_model_dirs["llama"])
    yield engine
    await engine.shutdown()


@pytest_asyncio.fixture(scope=LOOP, loop_scope=LOOP)
async def server(engine: AsyncEngine) -> AsyncIterator[Server]:
    async with running_server(engine) as server:
        yield server


@pytest_asyncio.fixture(loop_scope=LOOP)
async def client(server: Server) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=30)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def rss_bytes() -> int:
    """This process's resident memory, from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def wait_for(condition, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:  # noqa: ANN001
    """Poll an async predicate until it holds or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if await condition():
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval_s)
