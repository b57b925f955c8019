"""Shared fixtures: tiny Llama-family models built locally with transformers.

Nothing here touches the network: the hub is forced offline before any
Hugging Face module is imported, and every model is written to a temp dir.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.tiny_models import ARCHITECTURES, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per supported architecture, keyed by a short name."""
    root = tmp_path_factory.mktemp("models")
    return {name: save_tiny_model(name, root / name) for name in ARCHITECTURES}


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
