"""Server-side figures from GET /metrics, read before and after a run.

Optional by design: a server without /metrics, or whose /metrics is not
Prometheus text, gets no `server_metrics` (None) and no complaint. Names are
matched by suffix so that Helix's `helix:*` and vLLM's `vllm:*` families both
work: counters are differenced over the run, gauges read after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

_PROMETHEUS_TYPES = ("text/plain", "application/openmetrics-text")


@dataclass
class Snapshot:
    """Samples keyed `name` or `name{k=v,...}`, with the type of the family each belongs to."""

    values: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # key -> sample name without labels
    labels: dict[str, dict[str, str]] = field(default_factory=dict)


def parse(text: str) -> Snapshot | None:
    """None when the text is not Prometheus exposition format (or holds no samples)."""
    snapshot = Snapshot()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}" if labels else sample.name
                snapshot.values[key] = float(sample.value)
                snapshot.kinds[key] = family.type
                snapshot.names[key] = sample.name
                snapshot.labels[key] = dict(sample.labels)
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return snapshot if snapshot.values else None


async def scrape(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> Snapshot | None:
    try:
        async with session.get(f"{base_url}/metrics", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status != 200:
                return None
            if not response.content_type.startswith(_PROMETHEUS_TYPES):
                return None
            text = await response.text(errors="replace")
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return None
    return parse(text)


def _delta(before: Snapshot, after: Snapshot, key: str) -> float:
    return after.values.get(key, 0.0) - before.values.get(key, 0.0)


def _find(snapshot: Snapshot, suffix: str, kind: str | None = None, exclude: str = "") -> list[str]:
    """Keys whose sample name ends with `suffix` (after a `:` or `_` boundary or whole)."""
    keys = []
    for key, name in snapshot.names.items():
        if exclude and exclude in name:
            continue
        if kind is not None and snapshot.kinds[key] != kind and not _untyped_counter(snapshot, key, kind):
            continue
        if name == suffix or name.endswith(":" + suffix) or name.endswith("_" + suffix):
            keys.append(key)
    return keys


def _untyped_counter(snapshot: Snapshot, key: str, kind: str) -> bool:
    """A sample without a TYPE line whose name says it is a counter."""
    untyped = snapshot.kinds[key] in ("unknown", "untyped")
    return kind == "counter" and untyped and snapshot.names[key].endswith("_total")


def _counter_delta(before: Snapshot, after: Snapshot, suffix: str, exclude: str = "") -> float | None:
    keys = _find(after, suffix, "counter", exclude)
    return sum(_delta(before, after, k) for k in keys) if keys else None


def _gauge(after: Snapshot, suffix: str) -> float | None:
    keys = _find(after, suffix, "gauge")
    return after.values[keys[0]] if keys else None


def summarize(before: Snapshot | None, after: Snapshot | None) -> dict[str, Any] | None:
    """Figures of the run (None unless both scrapes worked). Keys are present only when
    the server exports what they come from."""
    if before is None or after is None:
        return None
    result: dict[str, Any] = {}

    accepted = _counter_delta(before, after, "accepted_tokens_total", exclude="per_pos")
    drafted = _counter_delta(before, after, "draft_tokens_total", exclude="per_pos")
    if accepted is not None and drafted is not None:
        result["spec_accepted_tokens"] = accepted
        result["spec_draft_tokens"] = drafted
        result["spec_acceptance_rate"] = accepted / drafted if drafted > 0 else None
    elif (rate := _gauge(after, "acceptance_rate")) is not None:
        result["spec_acceptance_rate"] = rate

    if (preemptions := _counter_delta(before, after, "num_preemptions_total")) is not None:
        result["preemptions"] = preemptions
    swap_keys = _find(after, "num_swaps_total", "counter")
    if swap_keys:
        for key in swap_keys:
            direction = after.labels[key].get("direction")
            if direction:
                result[f"swaps_{direction}"] = _delta(before, after, key)
        result["swaps"] = sum(_delta(before, after, k) for k in swap_keys)

    hits = _counter_delta(before, after, "prefix_cache_hits_total")
    queries = _counter_delta(before, after, "prefix_cache_queries_total")
    if hits is not None and queries is not None:
        result["prefix_cache_hits"] = hits
        result["prefix_cache_queries"] = queries
        result["prefix_cache_hit_rate"] = hits / queries if queries > 0 else None
    elif (rate := _gauge(after, "prefix_cache_hit_rate")) is not None:
        result["prefix_cache_hit_rate"] = rate  # the server's own (cumulative) figure

    for name in ("prompt_tokens", "generation_tokens"):
        if (delta := _counter_delta(before, after, f"{name}_total")) is not None:
            result[name] = delta
    finished = {after.labels[k].get("finished_reason", ""): _delta(before, after, k)
                for k in _find(after, "request_success_total", "counter")}
    if finished:
        result["finished_reasons"] = finished

    result["counter_deltas"] = {k: _delta(before, after, k) for k in after.values
                                if after.kinds[k] == "counter" or _untyped_counter(after, k, "counter")}
    result["gauges"] = {k: v for k, v in after.values.items() if after.kinds[k] == "gauge"}
    result["histogram_means"] = _histogram_means(before, after)
    return result


def _histogram_means(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Mean of each histogram over the run (its unit, e.g. seconds): delta sum / delta count."""
    means = {}
    for key, name in after.names.items():
        if after.kinds[key] != "histogram" or not name.endswith("_count"):
            continue
        count = _delta(before, after, key)
        sum_key = name[: -len("_count")] + "_sum" + key[len(name):]
        if count > 0 and sum_key in after.values:
            means[name[: -len("_count")] + key[len(name):]] = _delta(before, after, sum_key) / count
    return means
