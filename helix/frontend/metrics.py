"""Prometheus metrics, one CollectorRegistry per app.

Engine-wide numbers (queue sizes, KV usage, token and preemption counters)
are read from `engine.stats()` at scrape time by `EngineCollector`; latencies
and finish reasons are observed per request by `RequestTracker`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from helix.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0, 240.0,
                480.0)

Stats = Callable[[], Mapping[str, float | int]]


class EngineCollector(Collector):
    def __init__(self, stats: Stats, in_flight: Callable[[], int]):
        self._stats = stats
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily("helix:num_requests_running", "Requests in the running batch.", s["running"])
        yield GaugeMetricFamily("helix:num_requests_waiting", "Requests waiting to be scheduled.", s["waiting"])
        yield GaugeMetricFamily("helix:num_requests_swapped", "Preempted requests whose KV is in CPU swap.",
                                s["swapped"])
        yield GaugeMetricFamily("helix:num_requests_in_flight", "HTTP generation requests being served.",
                                self._in_flight())
        yield GaugeMetricFamily("helix:kv_cache_usage_perc", "Fraction of GPU KV blocks in use (1 = full).",
                                s["kv_cache_usage"])
        yield GaugeMetricFamily("helix:prefix_cache_hit_rate", "Fraction of prompt blocks served from the "
                                "prefix cache.", s["prefix_cache_hit_rate"])
        yield CounterMetricFamily("helix:prompt_tokens", "Prompt tokens computed (recomputation included).",
                                  s["prompt_tokens"])
        yield CounterMetricFamily("helix:generation_tokens", "Tokens generated.", s["generation_tokens"])
        yield CounterMetricFamily("helix:num_preemptions", "Requests preempted for lack of KV blocks.",
                                  s["preemptions"])
        swaps = CounterMetricFamily("helix:num_swaps", "KV swaps between GPU and CPU, by direction.",
                                    labels=["direction"])
        swaps.add_metric(["out"], s["swapped_out"])
        swaps.add_metric(["in"], s["swapped_in"])
        yield swaps
        yield from _speculation_metrics(s)


def _speculation_metrics(s: Mapping[str, float | int]) -> Iterator[Metric]:
    yield CounterMetricFamily("helix:spec_decode_num_drafts", "Verify steps that checked draft tokens.",
                              s["spec_drafts"])
    yield CounterMetricFamily("helix:spec_decode_num_draft_tokens", "Draft tokens proposed.",
                              s["spec_draft_tokens"])
    yield CounterMetricFamily("helix:spec_decode_num_accepted_tokens", "Draft tokens accepted by the target.",
                              s["spec_accepted_tokens"])
    yield CounterMetricFamily("helix:spec_decode_rounds_past_stop",
                              "Chained speculative rounds that ran after their request stopped.",
                              s["spec_rounds_past_stop"])
    yield GaugeMetricFamily("helix:spec_decode_acceptance_rate", "Accepted / proposed draft tokens so far.",
                            s["acceptance_rate"])
    yield GaugeMetricFamily("helix:spec_decode_mean_accepted_length",
                            "Mean tokens emitted per verify step (accepted drafts + 1).", s["mean_accepted_length"])
    per_position = GaugeMetricFamily("helix:spec_decode_acceptance_rate_per_position",
                                     "Acceptance rate of the draft at each position.", labels=["position"])
    for key, value in s.items():
        if key.startswith("acceptance_rate_position_"):
            per_position.add_metric([key.rsplit("_", 1)[1]], value)
    yield per_position
    steps = CounterMetricFamily("helix:spec_decode_steps", "Steps with decoding requests, by the number of draft "
                                "tokens K the speculation policy gave them (0: plain decoding).", labels=["k"])
    estimates = GaugeMetricFamily("helix:spec_decode_step_seconds",
                                  "The adaptive policy's estimate of a step's wall period, by batch-size class "
                                  "(the number of decoding requests rounded up to a power of two) and K; a "
                                  "multi-step's per position.",
                                  labels=["batch_class", "k"])
    for key, value in s.items():
        if key.startswith("spec_steps_k_"):
            steps.add_metric([key.rsplit("_", 1)[1]], value)
        elif key.startswith("spec_step_seconds_class_"):
            cls, k = key.removeprefix("spec_step_seconds_class_").split("_k_")
            estimates.add_metric([cls, k], value)
    yield steps
    yield estimates
    yield GaugeMetricFamily("helix:spec_decode_synthetic_acceptance",
                            "Benchmark mode: the coin probability that decides acceptance instead of the model "
                            "(0 = off, acceptance is real).", s["spec_synthetic_acceptance"])


class ServerMetrics:
    def __init__(self, stats: Stats, in_flight: Callable[[], int]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(EngineCollector(stats, in_flight))
        self.ttft = Histogram("helix:time_to_first_token_seconds", "Time from request arrival to first token.",
                              buckets=_TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("helix:inter_token_latency_seconds",
                             "Time between successive output tokens as streamed (an output carrying k new tokens "
                             "counts as k gaps sharing its interval).",
                             buckets=_ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram("helix:e2e_request_latency_seconds", "Time from request arrival to its end.",
                             buckets=_E2E_BUCKETS, registry=self.registry)
        self.success = Counter("helix:request_success", "Completions ended, by finish reason.",
                               ["finished_reason"], registry=self.registry)

    def track(self, num_completions: int) -> RequestTracker:
        return RequestTracker(self, num_completions)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Latencies and finish reasons of one engine request (all of its n completions)."""

    def __init__(self, metrics: ServerMetrics, num_completions: int):
        self._metrics = metrics
        self._num_completions = num_completions
        self._start = time.monotonic()
        self._last_token: float | None = None
        self._counted: set[int] = set()

    def observe(self, output: RequestOutput) -> None:
        now = time.monotonic()
        # Outputs a busy server did not stream at once arrive merged: count per token, not per output.
        new_tokens = max((len(c.delta_token_ids) for c in output.outputs), default=0)
        if new_tokens:
            if self._last_token is None:
                self._metrics.ttft.observe(now - self._start)
                gaps, gap = new_tokens - 1, 0.0  # the rest of the first output came with its first token
            else:
                gaps, gap = new_tokens, (now - self._last_token) / new_tokens
            for _ in range(gaps):
                self._metrics.itl.observe(gap)
            self._last_token = now
        for completion in output.outputs:
            if completion.finish_reason is not None and completion.index not in self._counted:
                self._counted.add(completion.index)
                self._metrics.success.labels(completion.finish_reason).inc()
        if output.finished:
            self._metrics.e2e.observe(now - self._start)

    def aborted(self) -> None:
        """The request was abandoned (client gone) before it finished."""
        if len(self._counted) == self._num_completions:
            return
        for index in range(self._num_completions):
            if index not in self._counted:
                self._counted.add(index)
                self._metrics.success.labels("abort").inc()
        self._metrics.e2e.observe(time.monotonic() - self._start)
