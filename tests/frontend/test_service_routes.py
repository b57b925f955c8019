"""/v1/models, /health, /version, /metrics, /openapi.json, /tokenize, /detokenize."""

from __future__ import annotations

import aiohttp
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

import helix
from tests.frontend.conftest import LOOP, MODEL_NAME, Server

pytestmark = pytest.mark.asyncio(loop_scope=LOOP)


async def test_models(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    (card,) = models.data
    assert card.id == MODEL_NAME and card.object == "model" and card.owned_by == "helix"
    assert card.model_extra["max_model_len"] == 512 and card.created > 0


async def test_health_and_version(server: Server, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url("/health")) as response:
        assert response.status == 200
    async with http.get(server.url("/version")) as response:
        assert (await response.json()) == {"version": helix.__version__}


async def test_metrics_parse_and_count(server: Server, http: aiohttp.ClientSession, client: AsyncOpenAI) -> None:
    before = await server.metrics(http)
    await client.completions.create(model=MODEL_NAME, prompt=[1, 2, 3, 4], max_tokens=5, n=2,
                                    extra_body={"ignore_eos": True})
    async with http.get(server.url("/metrics")) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    for name in ("helix:num_requests_running", "helix:num_requests_waiting", "helix:num_requests_swapped",
                 "helix:kv_cache_usage_perc", "helix:time_to_first_token_seconds",
                 "helix:inter_token_latency_seconds", "helix:e2e_request_latency_seconds", "helix:prompt_tokens",
                 "helix:generation_tokens", "helix:request_success", "helix:num_preemptions", "helix:num_swaps",
                 "helix:spec_decode_num_draft_tokens", "helix:spec_decode_num_accepted_tokens",
                 "helix:spec_decode_acceptance_rate", "helix:spec_decode_rounds_past_stop"):
        assert name in families, name
    assert families["helix:time_to_first_token_seconds"].type == "histogram"
    assert families["helix:generation_tokens"].type == "counter"
    after = await server.metrics(http)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta("helix:generation_tokens_total") == 10
    assert delta("helix:request_success_total{finished_reason=length}") == 2
    assert delta("helix:time_to_first_token_seconds_count") == 1
    assert delta("helix:e2e_request_latency_seconds_count") == 1
    assert delta("helix:inter_token_latency_seconds_count") >= 4  # n=2 samples may start a step apart
    assert after["helix:kv_cache_usage_perc"] == 0


async def test_openapi_is_generated_from_the_types(server: Server, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url("/openapi.json")) as response:
        document = await response.json()
    schemas = document["components"]["schemas"]
    for name in ("CompletionRequest", "ChatCompletionRequest", "TokenizeRequest", "DetokenizeRequest",
                 "ChatMessage", "ErrorResponse"):
        assert name in schemas, name
    assert schemas["CompletionRequest"]["required"] == ["prompt"]
    assert schemas["CompletionRequest"]["properties"]["n"]["maximum"] == 16
    operation = document["paths"]["/v1/completions"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompletionRequest")
    assert "security" not in document["paths"]["/health"]["get"]


async def test_tokenize_round_trip(server: Server, http: aiohttp.ClientSession) -> None:
    async with http.post(server.url("/tokenize"), json={"prompt": "The quick brown fox"}) as response:
        tokenized = await response.json()
    assert tokenized["count"] == len(tokenized["tokens"]) > 0 and tokenized["max_model_len"] == 512
    async with http.post(server.url("/detokenize"), json={"tokens": tokenized["tokens"]}) as response:
        assert (await response.json()) == {"prompt": "The quick brown fox"}
