"""Shared fixtures: tiny Llama-family models built locally with transformers.

Nothing here touches the network: the hub is forced offline before any
Hugging Face module is imported, and every model is written to a temp dir.
Every engine built by the suite verifies its block accounting after each step.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HELIX_CHECK_INVARIANTS"] = "1"  # every engine in the suite checks block accounting each step
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tests.reference import hf_greedy  # noqa: E402
from tests.tiny_models import ARCHITECTURES, VOCAB_SIZE, save_tiny_model  # noqa: E402

GREEDY_MAX_TOKENS = 20


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per supported architecture, keyed by a short name."""
    root = tmp_path_factory.mktemp("models")
    return {name: save_tiny_model(name, root / name) for name in ARCHITECTURES}


@pytest.fixture(scope="session")
def unrelated_draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama with the same tokenizer as tiny_model_dirs["llama"] but other weights."""
    return save_tiny_model("llama", tmp_path_factory.mktemp("draft") / "unrelated", seed=1)


@pytest.fixture(scope="session")
def greedy_prompts() -> list[list[int]]:
    """32 prompts of mixed lengths (1-59 tokens) for the greedy regime tests."""
    rng = random.Random(7)
    return [[rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randrange(1, 60))] for _ in range(32)]


@pytest.fixture(scope="session")
def greedy_expected(tiny_model_dirs: dict[str, Path], greedy_prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, computed alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], dtype=torch.float32).eval()
    return [hf_greedy(model, p, GREEDY_MAX_TOKENS) for p in greedy_prompts]


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
