"""A real Helix server (tiny Llama, free port) for the load client's end-to-end tests.

Only the Llama model is built, and the engine and server are started once for
the package, on the package-wide event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.frontend.conftest import Server, make_engine, running_server
from tests.tiny_models import save_tiny_model

LOOP = "package"


@pytest.fixture(scope="package")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("llama", tmp_path_factory.mktemp("load-model") / "llama")


@pytest_asyncio.fixture(scope=LOOP, loop_scope=LOOP)
async def helix_server(tiny_llama_dir: Path) -> AsyncIterator[Server]:
    engine = make_engine(tiny_llama_dir)
    try:
        async with running_server(engine) as server:
            yield server
    finally:
        await engine.shutdown()
