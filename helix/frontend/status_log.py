"""The periodic one-line status log of `helix serve`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger("helix.serve")

Stats = Mapping[str, float | int]


def status_line(before: Stats, after: Stats, elapsed_s: float) -> str | None:
    """None when nothing happened in the interval (no tokens, nothing queued or running)."""
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    generated = after["generation_tokens"] - before["generation_tokens"]
    busy = after["running"] or after["waiting"] or after["swapped"]
    if not (prompt or generated or busy):
        return None
    elapsed_s = max(elapsed_s, 1e-9)
    line = (f"prompt {prompt / elapsed_s:.1f} tok/s, generation {generated / elapsed_s:.1f} tok/s, "
            f"running {after['running']}, waiting {after['waiting']}, swapped {after['swapped']}, "
            f"KV usage {100 * after['kv_cache_usage']:.1f}%")
    drafted = after.get("spec_draft_tokens", 0) - before.get("spec_draft_tokens", 0)
    if drafted:
        accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
        line += f", acceptance {100 * accepted / drafted:.1f}%"
    return line


async def log_status(stats: Callable[[], Stats], interval_s: float) -> None:
    """Runs until cancelled. Rates are measured over the interval, from the engine's token counters."""
    before, started = dict(stats()), time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        after, now = dict(stats()), time.monotonic()
        line = status_line(before, after, now - started)
        if line is not None:
            logger.info(line)
        before, started = after, now
