"""What the client asks of the server besides generation: the model list, and
token counts from POST /tokenize where the server has it.

Only /v1/models is part of the OpenAI API; /tokenize is optional and, when
absent, token counts fall back to len(text) // 4.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp


def normalize_base_url(url: str) -> str:
    """The server root: no trailing slash, no trailing /v1."""
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@dataclass(frozen=True)
class ModelInfo:
    id: str
    max_model_len: int | None


async def list_models(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> list[ModelInfo]:
    """GET /v1/models; raises RuntimeError when the server does not answer with a model list."""
    try:
        async with session.get(f"{base_url}/v1/models", headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"GET /v1/models answered HTTP {response.status}: "
                                   f"{(await response.text())[:300]}")
            body = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        raise RuntimeError(f"GET /v1/models failed: {type(error).__name__}: {error}") from error
    models = []
    for card in (body.get("data") or []) if isinstance(body, dict) else []:
        if isinstance(card, dict) and isinstance(card.get("id"), str):
            length = card.get("max_model_len")
            models.append(ModelInfo(card["id"], length if isinstance(length, int) else None))
    return models


def approx_token_count(text: str) -> int:
    return len(text) // 4


class ServerTokenizer:
    """Token ids and counts from the server's POST /tokenize, or estimates without it."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, headers: dict[str, str], model: str,
                 max_parallel: int = 16):
        self._session = session
        self._url = f"{base_url}/tokenize"
        self._headers = headers
        self._model = model
        self._limit = asyncio.Semaphore(max_parallel)
        self.available: bool | None = None  # unknown until probed

    async def probe(self) -> bool:
        """Whether the server tokenizes (asked once)."""
        if self.available is None:
            self.available = await self._tokenize("Hello world") is not None
        return self.available

    async def encode(self, text: str) -> list[int] | None:
        """Token ids without special tokens; None when the server cannot tokenize."""
        if not await self.probe():
            return None
        return await self._tokenize(text)

    async def _tokenize(self, text: str) -> list[int] | None:
        body: dict[str, Any] = {"model": self._model, "prompt": text, "add_special_tokens": False}
        try:
            async with self._limit, self._session.post(self._url, json=body, headers=self._headers) as response:
                if response.status != 200:
                    return None
                answer = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        return tokens

    async def count(self, text: str) -> int:
        """Tokens in `text`: the server's count when it has /tokenize, else len(text) // 4."""
        tokens = await self.encode(text)
        return len(tokens) if tokens is not None else approx_token_count(text)
