"""The policy trace records every decision and every period the scheduler
reports to the speculation policy, in order, and the engine still decodes."""

from __future__ import annotations

from pathlib import Path

from benchmarks import policy_trace
from helix import LLM


def test_fixed_k_is_decided_and_observed_at_every_step(tiny_model_dirs: dict[str, Path],
                                                       greedy_prompts: list[list[int]],
                                                       greedy_expected: list[list[int]]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_speculative_tokens=3, speculation_mode="fixed", num_kv_blocks=128,
              block_size=4, max_num_seqs=1, num_scheduler_steps=4)
    events = policy_trace.trace(llm, greedy_prompts[0], len(greedy_expected[0]), 2)
    decided = [event for event in events if event["event"] == "decide"]
    observed = [event for event in events if event["event"] == "observe"]
    # Near max_tokens the scheduler cuts K per request; the plan stays K_max.
    assert decided and all(event["k"] == 3 and event["batch"] == 1 for event in decided)
    assert observed and all(event["k"] == 3 and event["ms"] > 0 for event in observed)
    assert events[0] == {"event": "phase", "name": "single"}
    assert events[1]["event"] == "decide"  # a period follows the decision of its step
    assert llm.stats()["generation_tokens"] == 2 * len(greedy_expected[0])
    text = policy_trace.summary(events)
    assert text.startswith(f"single: decisions by K: K=3: {len(decided)}")


def test_adaptive_estimates_appear_once_measured(tiny_model_dirs: dict[str, Path],
                                                 greedy_prompts: list[list[int]]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_speculative_tokens=3, num_kv_blocks=128, block_size=4, max_num_seqs=1)
    events = policy_trace.trace(llm, greedy_prompts[0], 16, 1)
    decided = [i for i, event in enumerate(events) if event["event"] == "decide"]
    assert events[decided[0]]["estimates_ms"] == {}  # nothing measured before the first step
    last = decided[-1]
    measured = {event["k"] for event in events[:last] if event["event"] == "observe" and event["steady"]}
    assert measured
    assert {f"class 1 K={k}" for k in measured} <= set(events[last]["estimates_ms"])


def test_a_burst_is_traced_before_the_single_requests(tiny_model_dirs: dict[str, Path],
                                                      greedy_prompts: list[list[int]]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_speculative_tokens=3, speculation_mode="fixed", num_kv_blocks=256,
              block_size=4, max_num_seqs=4)
    burst = greedy_prompts[1:4]
    events = policy_trace.trace(llm, greedy_prompts[0], 8, 1, burst)
    phases = [i for i, event in enumerate(events) if event["event"] == "phase"]
    assert [events[i]["name"] for i in phases] == ["burst", "single"]
    in_burst = [event["batch"] for event in events[:phases[1]] if event["event"] == "decide"]
    after = [event["batch"] for event in events[phases[1]:] if event["event"] == "decide"]
    assert max(in_burst) == len(burst) and set(after) == {1}
    assert llm.stats()["generation_tokens"] == 8 * (len(burst) + 1)
    text = policy_trace.summary(events)
    assert text.splitlines()[0].startswith("burst: decisions by K: K=3:")
    assert text.splitlines()[1].startswith("single: decisions by K: K=3:")
