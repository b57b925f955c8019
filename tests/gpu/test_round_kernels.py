"""The chained rounds' Triton kernels against their PyTorch reference (the CPU
path), on fresh random inputs: the same integers, every element."""

from __future__ import annotations

import pytest
import torch

from helix.worker.spec_decode import round_kernels

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and round_kernels.AVAILABLE),
                                reason="needs CUDA and Triton")


@pytest.mark.parametrize("num_seqs,query_len", [(1, 1), (3, 2), (16, 5), (7, 9)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_shift_inputs_matches_the_reference(num_seqs: int, query_len: int, block_size: int) -> None:
    generator = torch.Generator().manual_seed(num_seqs * 100 + query_len * 10 + block_size)
    width = 64
    starts = torch.randint(0, 20 * block_size, (num_seqs, 1), generator=generator)
    # Staged as the graph runners stage them: rows of a larger token buffer.
    buffer = torch.zeros((3, 64 * 9), dtype=torch.int64)
    positions = buffer[1, :num_seqs * query_len].view(num_seqs, query_len)
    positions.copy_(starts + torch.arange(query_len))
    slots = buffer[2, :num_seqs * query_len].view(num_seqs, query_len)
    seq_lens = (starts.squeeze(1) + query_len).to(torch.int32)
    tables = torch.randint(0, 1000, (num_seqs, width), dtype=torch.int32, generator=generator)
    by = torch.randint(0, 4 * block_size, (num_seqs,), generator=generator)
    on_gpu = [t.cuda() for t in (buffer, seq_lens, tables, by)]
    gpu_positions = on_gpu[0][1, :num_seqs * query_len].view(num_seqs, query_len)
    gpu_slots = on_gpu[0][2, :num_seqs * query_len].view(num_seqs, query_len)
    round_kernels.shift_inputs(gpu_positions, on_gpu[1], gpu_slots, on_gpu[2], on_gpu[3], block_size)
    round_kernels.shift_inputs(positions, seq_lens, slots, tables, by, block_size)
    assert torch.equal(on_gpu[0].cpu(), buffer)
    assert torch.equal(on_gpu[1].cpu(), seq_lens)
    assert torch.equal(buffer[1, :num_seqs * query_len].view(num_seqs, query_len), starts + torch.arange(query_len)
                       + by.unsqueeze(1))


def test_shift_inputs_on_a_column_view() -> None:
    """The draft loop's static inputs: one position per sequence, [n] unsqueezed."""
    positions, slots = torch.tensor([3, 17, 40]), torch.tensor([-9, -9, -9])
    seq_lens = (positions + 1).to(torch.int32)
    tables = torch.arange(3 * 32, dtype=torch.int32).view(3, 32)
    by = torch.tensor([0, 5, 11])
    gpu = [t.cuda() for t in (positions, slots, seq_lens, tables, by)]
    round_kernels.shift_inputs(gpu[0].unsqueeze(1), gpu[2], gpu[1].unsqueeze(1), gpu[3], gpu[4], 4)
    round_kernels.shift_inputs(positions.unsqueeze(1), seq_lens, slots.unsqueeze(1), tables, by, 4)
    for device_tensor, host_tensor in zip(gpu, (positions, slots, seq_lens)):
        assert torch.equal(device_tensor.cpu(), host_tensor)
    assert positions.tolist() == [3, 22, 51]


@pytest.mark.parametrize("batch,k", [(1, 1), (4, 4), (16, 8), (9, 3)])
def test_advance_matches_the_reference(batch: int, k: int) -> None:
    generator = torch.Generator().manual_seed(batch * 10 + k)
    accepted = torch.rand((batch, k), generator=generator) < 0.7
    accepted[0] = True  # every draft kept
    if batch > 1:
        accepted[1] = False  # none kept
    drafts = torch.randint(0, 32000, (batch, k), generator=generator)
    best = torch.randint(0, 32000, (batch, k + 1), generator=generator)
    last = torch.randint(0, 32000, (batch,), generator=generator)
    by = torch.randint(0, 50, (batch,), generator=generator)
    expected = round_kernels.advance(accepted, drafts, best, last, by)
    fused = round_kernels.advance(*(t.cuda() for t in (accepted, drafts, best, last, by)))
    for got, want in zip(fused, expected):
        assert torch.equal(got.cpu(), want)
    assert expected[0][0] == k


@pytest.mark.parametrize("num_seqs,offset,count", [(1, -1, 2), (5, 1, 1), (16, 0, 9), (7, 0, 5)])
@pytest.mark.parametrize("block_size", [4, 16])
def test_span_inputs_matches_the_reference(num_seqs: int, offset: int, count: int, block_size: int) -> None:
    generator = torch.Generator().manual_seed(num_seqs * 100 + count * 10 + block_size)
    width = 12
    # Starts that reach past the tables' width: the block index is clamped.
    start = torch.randint(1, width * block_size + 8, (num_seqs,), generator=generator)
    live = (torch.rand(num_seqs, generator=generator) < 0.7).to(torch.int64)
    tables = torch.randint(0, 1000, (num_seqs, width), dtype=torch.int32, generator=generator)
    expected = round_kernels.span_inputs(start, live, tables, offset, count, block_size)
    fused = round_kernels.span_inputs(start.cuda(), live.cuda(), tables.cuda(), offset, count, block_size)
    for got, want in zip(fused, expected):
        assert got.dtype == want.dtype and torch.equal(got.cpu(), want)


@pytest.mark.parametrize("batch,k", [(1, 1), (4, 4), (16, 8), (9, 3)])
@pytest.mark.parametrize("strided_tests", [False, True])
def test_finish_round_matches_the_reference(batch: int, k: int, strided_tests: bool) -> None:
    generator = torch.Generator().manual_seed(batch * 10 + k)
    # Tests may be a slice of a wider buffer (the coins of every round), verdicts rows of a wider one.
    wide_tests = torch.rand((batch, k + 3 if strided_tests else k), generator=generator) < 0.7
    wide_tests[0] = True  # every draft kept
    if batch > 1:
        wide_tests[1] = False  # none kept
    drafts = torch.randint(0, 32000, (batch, k), generator=generator)
    best = torch.randint(0, 32000, (batch, k + 1), generator=generator)
    state = [torch.randint(0, 32000, (batch,), generator=generator) for _ in range(3)]  # last, before_last, start
    live = (torch.rand(batch, generator=generator) < 0.8).to(torch.int64)
    index = torch.tensor([2])
    wide_verdicts = torch.randint(0, 9, (4, 16 * 10 + 5), generator=generator)
    on_gpu = [t.cuda() for t in (wide_tests, drafts, best, *state, live, index, wide_verdicts)]
    round_kernels.finish_round(wide_tests[:, :k], drafts, best, *state, live, index, wide_verdicts[:, :16 * 10])
    round_kernels.finish_round(on_gpu[0][:, :k], *on_gpu[1:-1], on_gpu[-1][:, :16 * 10])
    for got, want in zip(on_gpu[3:], (*state, live, index, wide_verdicts)):
        assert torch.equal(got.cpu(), want)
    assert wide_verdicts[2, k] == k  # row 0 kept every draft
