"""Helix's paged model against transformers, logit for logit, in fp32.

Tolerance: max |helix - transformers| <= 1e-4 on logits of magnitude ~1-10
(fp32 differs only by summation order), and the argmax must be identical.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix.block_manager.block_pool import BlockPool
from helix.worker.models import build_model, model_source
from tests.paged_runner import PagedRunner
from tests.tiny_models import ARCHITECTURES, VOCAB_SIZE

ATOL = 1e-4
ARCH_NAMES = list(ARCHITECTURES)


def load_pair(model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    helix_model = build_model(model_source(str(model_dir), "auto"), "auto", torch.device("cpu"), torch.float32)
    return reference, helix_model


@torch.no_grad()
def reference_logits(reference: torch.nn.Module, token_ids: list[int]) -> torch.Tensor:
    return reference(torch.tensor([token_ids])).logits[0].float()  # [len, vocab]


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    error = (actual - expected).abs().max().item()
    assert error <= ATOL, f"max abs logit error {error:.2e} > {ATOL}"
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


def random_prompt(rng: random.Random, length: int) -> list[int]:
    return [rng.randrange(1, VOCAB_SIZE) for _ in range(length)]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batched_prefill_of_mixed_lengths(arch: str, tiny_model_dirs: dict[str, Path]) -> None:
    reference, model = load_pair(tiny_model_dirs[arch])
    rng = random.Random(1)
    prompts = {f"s{i}": random_prompt(rng, n) for i, n in enumerate([1, 7, 16, 33, 50])}
    runner = PagedRunner(model, BlockPool(64))
    logits = runner.step(prompts)
    for seq_id, prompt in prompts.items():
        assert_close(logits[seq_id], reference_logits(reference, prompt))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fifty_decode_steps_on_shuffled_blocks(arch: str, tiny_model_dirs: dict[str, Path]) -> None:
    reference, model = load_pair(tiny_model_dirs[arch])
    pool = BlockPool(96)
    shuffled = pool.allocate(96)
    random.Random(2).shuffle(shuffled)
    pool.free(shuffled)  # the free queue is now in a random order: tables are non-contiguous
    runner = PagedRunner(model, pool)
    rng = random.Random(3)
    sequences = {f"s{i}": random_prompt(rng, n) for i, n in enumerate([5, 12, 30])}
    logits = runner.step(sequences)
    logits = runner.greedy_decode(sequences, logits, num_steps=50)
    for seq_id, tokens in sequences.items():
        table = runner.tables.get(seq_id)
        assert any(b + 1 != c for b, c in zip(table, table[1:])), "blocks should be non-contiguous"
        assert_close(logits[seq_id], reference_logits(reference, tokens)[-1:])


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_prompt_prefilled_in_three_chunks(arch: str, tiny_model_dirs: dict[str, Path]) -> None:
    reference, model = load_pair(tiny_model_dirs[arch])
    prompt = random_prompt(random.Random(4), 45)
    expected = reference_logits(reference, prompt)
    runner = PagedRunner(model, BlockPool(32))
    for start, end in [(0, 13), (13, 30), (30, 45)]:  # chunk edges fall inside blocks
        assert_close(runner.step({"s": prompt[start:end]})["s"], expected[start:end])


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_multi_token_query_over_existing_context(arch: str, tiny_model_dirs: dict[str, Path]) -> None:
    reference, model = load_pair(tiny_model_dirs[arch])
    rng = random.Random(5)
    contexts = {"a": random_prompt(rng, 21), "b": random_prompt(rng, 8)}
    runner = PagedRunner(model, BlockPool(32))
    runner.step(contexts)
    # a 5-token query (draft verification shape) and a 1-token decode in one batch
    appended = {"a": random_prompt(rng, 5), "b": random_prompt(rng, 1)}
    logits = runner.step(appended)
    for seq_id in contexts:
        full = contexts[seq_id] + appended[seq_id]
        assert_close(logits[seq_id], reference_logits(reference, full)[-len(appended[seq_id]):])


def test_sliding_window_is_exercised(tiny_model_dirs: dict[str, Path]) -> None:
    # The mistral fixture's window (24) is shorter than the prompts above; dropping
    # the window from Helix's model must change its logits, or the test proves nothing.
    _, model = load_pair(tiny_model_dirs["mistral"])
    prompt = random_prompt(random.Random(6), 40)
    windowed = PagedRunner(model, BlockPool(16)).step({"s": prompt})["s"]
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
    unwindowed = PagedRunner(model, BlockPool(16)).step({"s": prompt})["s"]
    assert (windowed[30:] - unwindowed[30:]).abs().max() > 1e-3
