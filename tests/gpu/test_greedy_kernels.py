"""The greedy kernels against their PyTorch reference (the CPU path), on fresh
random inputs: the argmax of bf16 and float logits with ties, and the draft
loop's pass epilogue (`loop_step`), every element."""

from __future__ import annotations

import pytest
import torch

from helix.worker.kernels import greedy
from helix.worker.spec_decode import loop_step

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and greedy.AVAILABLE),
                                reason="needs CUDA and Triton")


def random_logits(num_rows: int, vocab: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random logits where row 0's largest value also sits at an earlier and a
    later column (a tie the first index must win), and row 1 is -inf but for two
    equal values (the kernel's padding value is -inf too)."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn((num_rows, vocab), generator=generator) * 4).to(dtype)
    top = logits[0].max()
    logits[0, vocab // 3] = top
    logits[0, vocab - 1] = top
    if num_rows > 1:
        logits[1] = float("-inf")
        logits[1, vocab - 2] = 1.0
        logits[1, vocab // 2] = 1.0
    return logits


@pytest.mark.parametrize("vocab", [1000, 2049, 32000, 128256])
@pytest.mark.parametrize("num_rows", [1, 5, 16, 45])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_greedy_tokens_match_argmax(vocab: int, num_rows: int, dtype: torch.dtype) -> None:
    logits = random_logits(num_rows, vocab, dtype, seed=vocab + num_rows)
    expected = logits.float().argmax(dim=-1)
    tokens = greedy.greedy_tokens(logits.cuda())
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens.cpu(), expected)


def test_greedy_tokens_on_strided_rows() -> None:
    # Every other row of a larger buffer, as a slice of a forward's output is.
    logits = random_logits(10, 32000, torch.bfloat16, seed=3).cuda()
    assert torch.equal(greedy.greedy_tokens(logits[::2]).cpu(), logits[::2].float().argmax(dim=-1).cpu())


@pytest.mark.parametrize("advance", [True, False])
@pytest.mark.parametrize("bucket,num_live", [(1, 1), (4, 3), (16, 16), (16, 9)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_loop_step_matches_the_reference(advance: bool, bucket: int, num_live: int, block_size: int) -> None:
    generator = torch.Generator().manual_seed(bucket * 100 + num_live * 10 + block_size + advance)
    width, depth_max, vocab = 40, 6, 32000
    logits = random_logits(bucket, vocab, torch.bfloat16, seed=bucket + num_live)
    live = (torch.arange(bucket) < num_live).to(torch.int64)
    positions = torch.randint(0, (width - 2) * block_size, (bucket,), generator=generator) * live
    seq_lens = ((positions + 1) * live).to(torch.int32)
    slots = torch.where(live.bool(), torch.randint(0, 10_000, (bucket,), generator=generator), -1)
    tables = torch.randint(0, 1000, (bucket, width), dtype=torch.int32, generator=generator)
    drafts = torch.randint(0, vocab, (bucket, depth_max), generator=generator)
    ids = torch.randint(0, vocab, (bucket,), generator=generator)
    cpu = [t.clone() for t in (drafts, ids, positions, seq_lens, slots)]
    gpu = [t.cuda() for t in (drafts, ids, positions, seq_lens, slots)]
    depth = 2
    loop_step.step(logits, cpu[0], depth, *cpu[1:], live, tables, block_size, advance)
    loop_step.step(logits.cuda(), gpu[0], depth, *gpu[1:], live.cuda(), tables.cuda(), block_size, advance)
    for name, want, got in zip(("drafts", "ids", "positions", "seq_lens", "slots"), cpu, gpu):
        assert torch.equal(got.cpu(), want), name
    assert torch.equal(cpu[0][:, depth], logits.float().argmax(dim=-1))
    assert torch.equal(cpu[2], positions + live if advance else positions)
