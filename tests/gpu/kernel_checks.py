"""Shared by the kernel tests: fresh seeds, NaN-poisoned allocations (so an
output the kernel never wrote fails), and the error summary they print and,
with HELIX_GPU_ERROR_DIR set, write as JSON."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest
import torch


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def poison_allocator(device: torch.device) -> None:
    """Leave NaN in the blocks the caching allocator hands out next (both pools)."""
    big = torch.full((64 << 20,), float("nan"), device=device)
    small = [torch.full((128 << 10,), float("nan"), device=device) for _ in range(16)]
    del big, small


def report(request: pytest.FixtureRequest, lines: list[str], file_name: str, payload: Any) -> None:
    """Print `lines` past pytest's capture; write `payload` under HELIX_GPU_ERROR_DIR if set."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            for line in lines:
                reporter.write_line(line)
    directory = os.environ.get("HELIX_GPU_ERROR_DIR")
    if directory:
        with open(os.path.join(directory, file_name), "w") as file:
            json.dump(payload, file, indent=1)
