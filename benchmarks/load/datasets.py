"""Where prompts come from: random token ids or words, ShareGPT, or JSONL.

Every dataset yields `SampleRequest`s: a prompt (text, or token ids for the
completions endpoint) with an estimated prompt length and the number of tokens
to ask for. The lengths reported in results come from the server's usage
chunk; the estimates here only fill in when a server sends none.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 128

# ShareGPT filters, as in vLLM's benchmark: drop very short and very long pairs.
MIN_SHAREGPT_LEN = 4
MAX_SHAREGPT_PROMPT_LEN = 1024
MAX_SHAREGPT_TOTAL_LEN = 2048
_HUMAN = {"human", "user"}
_GPT = {"gpt", "chatgpt", "assistant"}

# Words for random text prompts; each is one token or two in common vocabularies.
WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which this be or has had not "
    "first one their its new after but who they have her she two been other when there all during into school "
    "time may years more most only over city some world would where later up such used many can state about "
    "national out known university united then made between three people part through while under american "
    "team series since both game government before several well these also film however being district year "
    "music river world back four each them because around early called same house found history west north "
    "south east small county including large major family second third public water light paper stone bridge "
    "garden market window doctor letter silver summer winter autumn spring morning evening number language"
).split()


class Tokenizer(Protocol):
    """The server's tokenizer as far as prompts need it (see server_api.ServerTokenizer)."""

    async def probe(self) -> bool: ...

    async def encode(self, text: str) -> list[int] | None: ...

    async def count(self, text: str) -> int: ...


@dataclass(frozen=True)
class SampleRequest:
    prompt: str | list[int]
    prompt_len: int  # estimated; results use the server's usage when it reports one
    output_len: int  # max_tokens asked for


@dataclass(frozen=True)
class DatasetOptions:
    kind: str  # random | sharegpt | jsonl
    num_prompts: int
    endpoint: str  # completions | chat
    path: str | None = None
    input_len: int | None = None
    output_len: int | None = None
    range_ratio: float = 0.0
    vocab_size: int | None = None
    max_model_len: int | None = None
    seed: int = 0


async def load_requests(options: DatasetOptions, tokenizer: Tokenizer) -> list[SampleRequest]:
    if options.kind == "random":
        return await random_requests(options, tokenizer)
    if options.path is None:
        raise ValueError(f"--dataset {options.kind} needs --dataset-path")
    if options.kind == "sharegpt":
        return await sharegpt_requests(options, tokenizer)
    if options.kind == "jsonl":
        return await jsonl_requests(options, tokenizer)
    raise ValueError(f"unknown dataset {options.kind!r}")


# -- random --------------------------------------------------------------------------
def random_lengths(rng: np.random.Generator, length: int, range_ratio: float, count: int) -> list[int]:
    """`count` lengths uniform over the integers in [length*(1-r), length*(1+r)], at least 1."""
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--range-ratio must be in [0, 1), got {range_ratio}")
    low = max(1, int(np.floor(length * (1 - range_ratio))))
    high = max(low, int(np.ceil(length * (1 + range_ratio))))
    return [int(n) for n in rng.integers(low, high + 1, size=count)]


async def token_pool(options: DatasetOptions, tokenizer: Tokenizer) -> np.ndarray | None:
    """Token ids known to be valid for the server's model: the whole vocabulary when it
    was given, else the ids of the word list as the server tokenizes it; None without either."""
    if options.vocab_size is not None:
        return np.arange(options.vocab_size)
    if not await tokenizer.probe():
        return None
    ids = await tokenizer.encode(" " + " ".join(WORDS))
    if not ids:
        return None
    return np.unique(np.asarray(ids))


async def random_requests(options: DatasetOptions, tokenizer: Tokenizer) -> list[SampleRequest]:
    """Completions: token-id prompts of exact lengths, drawn from ids valid for the model.
    Chat (or a completions server with neither /tokenize nor --vocab-size): random words,
    as many as make the requested tokens by the server's /tokenize (one per token without it)."""
    rng = np.random.default_rng(options.seed)
    input_lens = random_lengths(rng, options.input_len or DEFAULT_INPUT_LEN, options.range_ratio,
                                options.num_prompts)
    output_lens = random_lengths(rng, options.output_len or DEFAULT_OUTPUT_LEN, options.range_ratio,
                                 options.num_prompts)
    pool = await token_pool(options, tokenizer) if options.endpoint == "completions" else None
    per_word = await tokens_per_word(tokenizer) if pool is None else 1.0
    requests = []
    for input_len, output_len in zip(input_lens, output_lens):
        if pool is not None:
            prompt: str | list[int] = [int(t) for t in rng.choice(pool, size=input_len)]
        else:
            prompt = " ".join(rng.choice(WORDS, size=max(1, round(input_len / per_word))))
        requests.append(SampleRequest(prompt, input_len, output_len))
    return requests


async def tokens_per_word(tokenizer: Tokenizer) -> float:
    """How many tokens a word of WORDS takes on average in the server's tokenizer (1 without /tokenize)."""
    if not await tokenizer.probe():
        return 1.0
    ids = await tokenizer.encode(" " + " ".join(WORDS))
    return max(1.0, len(ids) / len(WORDS)) if ids else 1.0


# -- ShareGPT ------------------------------------------------------------------------
def sharegpt_pairs(conversations: list[Any]) -> list[tuple[str, str]]:
    """(first human turn, the gpt turn that answers it) of each conversation that has both."""
    pairs = []
    for entry in conversations:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            continue
        human = next((i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("from") in _HUMAN), None)
        if human is None:
            continue
        answer = next((t for t in turns[human + 1:] if isinstance(t, dict) and t.get("from") in _GPT), None)
        if answer is None:
            continue
        prompt, completion = turns[human].get("value"), answer.get("value")
        if isinstance(prompt, str) and isinstance(completion, str):
            pairs.append((prompt, completion))
    return pairs


async def sharegpt_requests(options: DatasetOptions, tokenizer: Tokenizer) -> list[SampleRequest]:
    """Shuffled (seeded) ShareGPT pairs; the output length is the token count of the gpt
    answer (or --output-len); pairs too short or too long for a benchmark are skipped."""
    with open(Path(options.path or ""), encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, list):
        raise ValueError(f"{options.path}: expected a JSON list of conversations")
    pairs = sharegpt_pairs(data)
    order = np.random.default_rng(options.seed).permutation(len(pairs))
    max_total = MAX_SHAREGPT_TOTAL_LEN if options.max_model_len is None else min(MAX_SHAREGPT_TOTAL_LEN,
                                                                                  options.max_model_len)
    requests: list[SampleRequest] = []
    batch = max(16, options.num_prompts)
    for start in range(0, len(order), batch):
        chosen = [pairs[i] for i in order[start:start + batch]]
        prompt_lens = await asyncio.gather(*(tokenizer.count(prompt) for prompt, _ in chosen))
        if options.output_len is None:
            output_lens = await asyncio.gather(*(tokenizer.count(completion) for _, completion in chosen))
        else:
            output_lens = [options.output_len] * len(chosen)
        for (prompt, _), prompt_len, output_len in zip(chosen, prompt_lens, output_lens):
            if prompt_len < MIN_SHAREGPT_LEN or (options.output_len is None and output_len < MIN_SHAREGPT_LEN):
                continue
            if prompt_len > MAX_SHAREGPT_PROMPT_LEN or prompt_len + output_len > max_total:
                continue
            requests.append(SampleRequest(prompt, prompt_len, output_len))
            if len(requests) == options.num_prompts:
                return requests
    return requests


# -- JSONL ---------------------------------------------------------------------------
async def jsonl_requests(options: DatasetOptions, tokenizer: Tokenizer) -> list[SampleRequest]:
    """The first --num-prompts lines of {"prompt": text or token ids, "max_tokens": n}."""
    requests: list[SampleRequest] = []
    with open(Path(options.path or ""), encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            if len(requests) == options.num_prompts:
                break
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{options.path}:{number}: not JSON: {error}") from None
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                if options.endpoint == "chat":
                    raise ValueError(f"{options.path}:{number}: token-id prompts need --endpoint completions")
                prompt_len = len(prompt)
            elif isinstance(prompt, str):
                prompt_len = await tokenizer.count(prompt)
            else:
                raise ValueError(f"{options.path}:{number}: `prompt` must be text or a list of token ids")
            max_tokens = record.get("max_tokens")
            if max_tokens is None:
                max_tokens = options.output_len or DEFAULT_OUTPUT_LEN
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ValueError(f"{options.path}:{number}: `max_tokens` must be a positive integer")
            requests.append(SampleRequest(prompt, prompt_len, max_tokens))
    return requests
