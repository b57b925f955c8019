"""The host-ceiling benchmark's stub runner keeps the runner's contract: every
request gets exactly its max_tokens, blocks come back, and the served figure
comes from a real `helix serve` app under the load client."""

from __future__ import annotations

from benchmarks import host_ceiling
from benchmarks.suite import helix_offline


def test_offline_and_served_ceilings_run_to_completion() -> None:
    prompts = helix_offline.throughput_requests(6, 8, 24, 4096)
    assert host_ceiling.offline(prompts, 5) > 0
    result = host_ceiling.served_rate(prompts, 5)
    assert result["completed"] == 6 and result["total_output_tokens"] == 30


def test_the_served_ceiling_runs_with_the_engine_in_a_child_process() -> None:
    """The stub reaches the engine process through its core hook: every request
    still gets exactly its tokens."""
    prompts = helix_offline.throughput_requests(4, 8, 24, 4096)
    result = host_ceiling.served_rate(prompts, 5, engine_process=True)
    assert result["completed"] == 4 and result["total_output_tokens"] == 20


def test_the_stub_decodes_multi_steps() -> None:
    """With multi-steps the stub returns a token per step of each request: every
    request still gets exactly its max_tokens (7 in steps of 4: 1 + 4 + 2)."""
    prompts = helix_offline.throughput_requests(4, 8, 24, 4096)
    assert host_ceiling.offline(prompts, 7, num_scheduler_steps=4) > 0
    result = host_ceiling.served_rate(prompts, 7, num_scheduler_steps=4)
    assert result["completed"] == 4 and result["total_output_tokens"] == 28
