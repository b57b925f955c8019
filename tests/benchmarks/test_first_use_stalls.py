"""The first-use stall probe times every step of requests served one at a time,
and records what each step launched."""

from __future__ import annotations

import gc
from pathlib import Path

from benchmarks import first_use_stalls
from helix import LLM


def test_every_step_is_timed_with_what_it_launched(tiny_model_dirs: dict[str, Path]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_kv_blocks=128, block_size=4)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    records = first_use_stalls.serve_one_at_a_time(llm, prompts, 6)
    launched = [shape for record in records for shape in record.launched]
    assert all(record.milliseconds > 0 for record in records)
    # Each request alone: its prompt as one span, then one token plus its drafts per step.
    assert [shape for shape in launched if shape[1] > 1 + shape[2]] == [(1, 5, 0, 5), (1, 3, 0, 3)]
    assert all(shape[0] == 1 for shape in launched if shape[0])
    assert llm.stats()["generation_tokens"] == 12 and not llm.engine.has_unfinished()


def test_full_collections_are_timed() -> None:
    pauses: list[float] = []
    undo = first_use_stalls.record_full_collections(pauses)
    gc.collect(1)
    gc.collect()
    undo()
    gc.collect()
    assert len(pauses) == 1 and pauses[0] >= 0
