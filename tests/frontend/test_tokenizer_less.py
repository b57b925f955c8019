"""A model without a tokenizer (token-id prompts only) still streams: a
chunk of empty text for every step's tokens as the stream reads them, so
clients can time the first token and the gaps between tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.frontend.conftest import LOOP, make_engine, running_server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)


async def test_tokenizer_less_model_streams_a_chunk_per_step(tiny_model_dirs: dict[str, Path], tmp_path: Path,
                                                             http: aiohttp.ClientSession) -> None:
    model_dir = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dirs["llama"], model_dir,
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    engine = make_engine(model_dir)
    assert engine.tokenizer is None
    body = {"prompt": [5, 6, 7, 8], "max_tokens": 6, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    try:
        async with running_server(engine) as server:
            async with http.post(server.url("/v1/completions"), json=body) as response:
                assert response.status == 200
                events = [line.decode().strip()[6:] async for line in response.content
                          if line.startswith(b"data: ")]
    finally:
        await engine.shutdown()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    assert all(choice["text"] == "" for choice in choices)
    # A chunk per step the stream reads (steps it has not read yet merge), the last one
    # finishing: tokens are streamed as they come, not all at the end.
    assert len(choices) >= 2 and [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 6
