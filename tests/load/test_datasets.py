"""Random, ShareGPT and JSONL prompts (with a stand-in for the server's tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.load.datasets import WORDS, DatasetOptions, load_requests, random_lengths, sharegpt_pairs


class WordTokenizer:
    """A server whose /tokenize gives one token per character (or no /tokenize at all)."""

    def __init__(self, available: bool = True):
        self.available = available

    async def probe(self) -> bool:
        return self.available

    async def encode(self, text: str) -> list[int] | None:
        return [ord(c) % 50 for c in text] if self.available else None

    async def count(self, text: str) -> int:
        return len(text) if self.available else len(text) // 4


def options(**overrides) -> DatasetOptions:  # noqa: ANN003
    base = dict(kind="random", num_prompts=8, endpoint="completions", input_len=20, output_len=10)
    return DatasetOptions(**{**base, **overrides})


def test_random_lengths_stay_in_range() -> None:
    lengths = random_lengths(np.random.default_rng(0), 100, 0.25, 2000)
    assert min(lengths) == 75 and max(lengths) == 125
    assert random_lengths(np.random.default_rng(0), 7, 0.0, 5) == [7] * 5
    with pytest.raises(ValueError):
        random_lengths(np.random.default_rng(0), 10, 1.0, 1)


async def test_random_completions_are_token_ids_from_the_servers_vocabulary() -> None:
    tokenizer = WordTokenizer()
    requests = await load_requests(options(range_ratio=0.5), tokenizer)
    valid = set(await tokenizer.encode(" " + " ".join(WORDS)))
    assert len(requests) == 8
    for request in requests:
        assert isinstance(request.prompt, list) and set(request.prompt) <= valid
        assert len(request.prompt) == request.prompt_len and 10 <= request.prompt_len <= 30
        assert 5 <= request.output_len <= 15
    assert requests == await load_requests(options(range_ratio=0.5), tokenizer)  # seeded
    assert requests != await load_requests(options(range_ratio=0.5, seed=1), tokenizer)


async def test_random_with_vocab_size_and_without_tokenize() -> None:
    by_vocab = await load_requests(options(vocab_size=7), WordTokenizer(available=False))
    assert all(isinstance(r.prompt, list) and max(r.prompt) < 7 for r in by_vocab)
    words = await load_requests(options(), WordTokenizer(available=False))
    assert all(isinstance(r.prompt, str) and len(r.prompt.split()) == 20 for r in words)
    chat = await load_requests(options(endpoint="chat"), WordTokenizer())
    assert all(isinstance(r.prompt, str) and set(r.prompt.split()) <= set(WORDS) for r in chat)


SHAREGPT = [
    {"id": "a", "conversations": [{"from": "human", "value": "Tell me a story about a dragon, please."},
                                  {"from": "gpt", "value": "Once upon a time there was a dragon."},
                                  {"from": "human", "value": "More!"}]},
    {"id": "b", "conversations": [{"from": "system", "value": "Be brief."},
                                  {"from": "human", "value": "What is the capital of France?"},
                                  {"from": "gpt", "value": "Paris is the capital."}]},
    {"id": "c", "conversations": [{"from": "human", "value": "Only a question, never answered"}]},
    {"id": "d", "conversations": [{"from": "gpt", "value": "An answer without a question"}]},
    {"id": "e", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there, friend"}]},
    {"id": "f", "conversations": [{"from": "human", "value": "x" * 5000}, {"from": "gpt", "value": "y" * 40}]},
]


def test_sharegpt_pairs() -> None:
    assert sharegpt_pairs(SHAREGPT) == [
        ("Tell me a story about a dragon, please.", "Once upon a time there was a dragon."),
        ("What is the capital of France?", "Paris is the capital."),
        ("Hi", "Hello there, friend"),
        ("x" * 5000, "y" * 40),
    ]


@pytest.mark.parametrize("available", [True, False])
async def test_sharegpt_requests(tmp_path: Path, available: bool) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(SHAREGPT))
    tokenizer = WordTokenizer(available)
    requests = await load_requests(options(kind="sharegpt", path=str(path), output_len=None, num_prompts=10),
                                   tokenizer)
    # "Hi" is too short and the 5000-character prompt too long for either count.
    assert sorted(r.prompt for r in requests) == ["Tell me a story about a dragon, please.",
                                                  "What is the capital of France?"]
    for request in requests:
        answer = dict(sharegpt_pairs(SHAREGPT))[request.prompt]
        assert request.output_len == (len(answer) if available else len(answer) // 4)
        assert request.prompt_len == (len(request.prompt) if available else len(request.prompt) // 4)
    fixed = await load_requests(options(kind="sharegpt", path=str(path), output_len=7, num_prompts=1), tokenizer)
    assert len(fixed) == 1 and fixed[0].output_len == 7


async def test_jsonl_requests(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hello there", "max_tokens": 5}\n\n{"prompt": [1, 2, 3]}\n'
                    '{"prompt": "third", "max_tokens": 2}\n')
    requests = await load_requests(options(kind="jsonl", path=str(path), num_prompts=2, output_len=9),
                                   WordTokenizer())
    assert [(r.prompt, r.prompt_len, r.output_len) for r in requests] == [("hello there", 11, 5), ([1, 2, 3], 3, 9)]
    with pytest.raises(ValueError, match="token-id prompts"):
        await load_requests(options(kind="jsonl", path=str(path), endpoint="chat"), WordTokenizer())
    path.write_text('{"max_tokens": 3}\n')
    with pytest.raises(ValueError, match="prompt"):
        await load_requests(options(kind="jsonl", path=str(path)), WordTokenizer())
