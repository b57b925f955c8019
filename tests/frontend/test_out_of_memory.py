"""Over HTTP, a request the engine fails for lack of memory gets a 503 in
OpenAI's error shape; requests beside it complete and the server stays healthy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.engine.test_out_of_memory import LONG_PROMPT, SHORT_PROMPTS, fail_forwards_over
from tests.frontend.conftest import LOOP, make_engine, running_server
from tests.frontend.test_errors import assert_error, call

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)


async def test_out_of_memory_is_a_503_for_that_request_only(tiny_model_dirs: dict[str, Path],
                                                            http: aiohttp.ClientSession) -> None:
    engine = make_engine(tiny_model_dirs["llama"])
    fail_forwards_over(engine.core.runner.model, max_tokens=40)
    try:
        async with running_server(engine) as server:
            url = server.url("/v1/completions")
            bodies = [{"prompt": prompt, "max_tokens": 8, "ignore_eos": True, "temperature": 0.0}
                      for prompt in SHORT_PROMPTS + [LONG_PROMPT]]
            results = await asyncio.gather(*(call(http, url, body) for body in bodies))
            for status, _, payload in results[:-1]:
                assert status == 200 and payload["usage"]["completion_tokens"] == 8
            status, headers, payload = results[-1]
            assert_error(status, payload, 503, "out of memory")
            status, _, _ = await call(http, server.url("/health"), method="GET")
            assert status == 200 and engine.is_running
            stats = engine.stats()
            assert stats["gpu_blocks_free"] == stats["gpu_blocks_total"]
    finally:
        await engine.shutdown()
