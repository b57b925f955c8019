"""/metrics shows what the speculation policy chose and what it measured: the
steps run at each K, and the adaptive policy's step-period estimates."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from helix import LLM, SamplingParams
from helix.frontend.metrics import ServerMetrics


def scrape(llm: LLM) -> tuple[dict[int, float], dict[tuple[int, int], float]]:
    """(steps by K, estimated step seconds by (batch class, K)) from the rendered metrics."""
    text = ServerMetrics(llm.stats, lambda: 0).render().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    steps = {int(s.labels["k"]): s.value for s in families["helix:spec_decode_steps"].samples
             if s.name.endswith("_total")}
    estimates = {(int(s.labels["batch_class"]), int(s.labels["k"])): s.value
                 for s in families["helix:spec_decode_step_seconds"].samples}
    return steps, estimates


def generate(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    llm.generate([[5, 6, 7], [8, 9, 10, 11]], params, use_tqdm=False)


def test_adaptive_policy_exports_its_choices_and_estimates(tiny_model_dirs: dict[str, Path]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_kv_blocks=128, block_size=4, num_speculative_tokens=4)
    generate(llm)
    steps, estimates = scrape(llm)
    # A batch-size class measures plain decoding first, then K_max.
    assert steps[0] > 0 and steps[4] > 0 and set(steps) <= set(range(5))
    drafting = sum(count for k, count in steps.items() if k > 0)
    assert drafting <= llm.stats()["spec_drafts"] <= 2 * drafting  # each such step verifies one or two requests
    assert {(2, 0), (2, 4)} <= set(estimates) and all(seconds > 0 for seconds in estimates.values())


def test_fixed_speculation_counts_its_steps_and_estimates_nothing(tiny_model_dirs: dict[str, Path]) -> None:
    model = str(tiny_model_dirs["llama"])
    llm = LLM(model, draft_model=model, num_kv_blocks=128, block_size=4, num_speculative_tokens=4,
              speculation_mode="fixed")
    generate(llm)
    steps, estimates = scrape(llm)
    assert set(steps) == {4} and steps[4] <= llm.stats()["spec_drafts"] <= 2 * steps[4]
    assert estimates == {}
