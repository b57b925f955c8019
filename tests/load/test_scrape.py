"""Server figures from two /metrics scrapes, for Helix's and vLLM's metric names."""

from __future__ import annotations

import pytest

from benchmarks.load.scrape import parse, summarize

HELIX_BEFORE = """\
# TYPE helix:num_requests_running gauge
helix:num_requests_running 0.0
# TYPE helix:prefix_cache_hit_rate gauge
helix:prefix_cache_hit_rate 0.1
# TYPE helix:generation_tokens_total counter
helix:generation_tokens_total 100.0
# TYPE helix:prompt_tokens_total counter
helix:prompt_tokens_total 400.0
# TYPE helix:num_preemptions_total counter
helix:num_preemptions_total 1.0
# TYPE helix:num_swaps_total counter
helix:num_swaps_total{direction="out"} 2.0
helix:num_swaps_total{direction="in"} 2.0
# TYPE helix:request_success_total counter
helix:request_success_total{finished_reason="length"} 5.0
helix:request_success_created{finished_reason="length"} 1.7e9
# TYPE helix:time_to_first_token_seconds histogram
helix:time_to_first_token_seconds_bucket{le="0.1"} 5.0
helix:time_to_first_token_seconds_bucket{le="+Inf"} 5.0
helix:time_to_first_token_seconds_count 5.0
helix:time_to_first_token_seconds_sum 0.25
"""

HELIX_AFTER = (HELIX_BEFORE
               .replace("prefix_cache_hit_rate 0.1", "prefix_cache_hit_rate 0.25")
               .replace("generation_tokens_total 100.0", "generation_tokens_total 180.0")
               .replace("prompt_tokens_total 400.0", "prompt_tokens_total 640.0")
               .replace("num_preemptions_total 1.0", "num_preemptions_total 4.0")
               .replace('direction="out"} 2.0', 'direction="out"} 5.0')
               .replace('direction="in"} 2.0', 'direction="in"} 4.0')
               .replace('finished_reason="length"} 5.0', 'finished_reason="length"} 15.0')
               .replace("seconds_count 5.0", "seconds_count 15.0")
               .replace("seconds_sum 0.25", "seconds_sum 1.25"))

VLLM = """\
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{{model_name="m"}} {draft}
# TYPE vllm:spec_decode_num_accepted_tokens_total counter
vllm:spec_decode_num_accepted_tokens_total{{model_name="m"}} {accepted}
# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter
vllm:spec_decode_num_accepted_tokens_per_pos_total{{model_name="m",position="0"}} {accepted}
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{model_name="m"}} {queries}
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{model_name="m"}} {hits}
"""


def test_helix_names() -> None:
    figures = summarize(parse(HELIX_BEFORE), parse(HELIX_AFTER))
    assert figures["preemptions"] == 3
    assert (figures["swaps_out"], figures["swaps_in"], figures["swaps"]) == (3, 2, 5)
    assert figures["prefix_cache_hit_rate"] == 0.25  # the server's gauge, read after the run
    assert (figures["generation_tokens"], figures["prompt_tokens"]) == (80, 240)
    assert figures["finished_reasons"] == {"length": 10}
    assert figures["histogram_means"] == {"helix:time_to_first_token_seconds": pytest.approx(0.1)}
    assert "spec_acceptance_rate" not in figures  # not exported: left out, not invented
    assert figures["gauges"]["helix:num_requests_running"] == 0
    assert not any(key.endswith("_created") for key in figures["counter_deltas"])


def test_vllm_names_rates_from_counter_deltas() -> None:
    before = parse(VLLM.format(draft=100, accepted=50, queries=1000, hits=100))
    after = parse(VLLM.format(draft=300, accepted=200, queries=2000, hits=600))
    figures = summarize(before, after)
    assert (figures["spec_draft_tokens"], figures["spec_accepted_tokens"]) == (200, 150)
    assert figures["spec_acceptance_rate"] == pytest.approx(0.75)  # per-position counters not double-counted
    assert figures["prefix_cache_hit_rate"] == pytest.approx(0.5)


def test_acceptance_rate_gauge() -> None:
    text = "# TYPE helix:spec_acceptance_rate gauge\nhelix:spec_acceptance_rate 0.6\n"
    assert summarize(parse(text), parse(text))["spec_acceptance_rate"] == 0.6


@pytest.mark.parametrize("text", ["", "<html><body>Not Found</body></html>", '{"detail": "Not Found"}',
                                  "requests served: many\n"])
def test_not_prometheus(text: str) -> None:
    assert parse(text) is None
    assert summarize(parse(text), parse(HELIX_AFTER)) is None
