"""Fused layer kernels (`helix.worker.kernels.triton_ops`) against the PyTorch
reference (`torch_ops`), on CUDA; and a whole model with them on and off,
eagerly and inside a CUDA graph.

Skipped where CUDA or Triton is absent (CI); run on a GPU machine before
calling kernel work done.

Every kernel test draws fresh random inputs (the seed is in each failure
message) and leaves NaN in the memory the caching allocator hands out next,
so an output element a kernel fails to write shows as NaN.

Bounds. The kernels round every op where the reference rounds it, so:
- exact (bitwise) where the whole computation is the reference's op order:
  the residual sum of `fused_add_rms_norm` and RoPE, in every dtype (each
  product and sum is rounded once to the dtype, as in the reference; the
  kernels are compiled without fused multiply-adds);
- elsewhere only fp32 internals differ (sum-of-squares order, rsqrt, exp),
  so bf16/fp16 outputs are within 2 ulps of the reference per element (rtol
  2^-6 bf16, 2^-9 fp16) and at most 1% of the elements differ at all (0.05%
  in interpreter runs); fp32 outputs are within rtol 1e-5 (+1e-6 abs).
Whole model (bf16, 3 layers), against the same weights in fp32 with the
reference kernels: the fused model's relative logit error ||a - o|| / ||o||
at most 1.25x the bf16 reference model's own. (Folding the norm weights into
the projections moves bf16 roundings, so the two bf16 models differ from each
other by about 1.4x either one's error, yet neither is less accurate.) Greedy
argmax equal to fp32's in every row where its top-2 gap exceeds twice the
row's largest logit difference (where no such differences can swap them),
which must be at least half the rows so that the check is never empty (the
tiny random model's top-2 gaps are small: against fp32, the bf16 reference
model itself has 75-90% of its rows decisive).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.attention import torch_attention as attention_reference
from helix.worker.attention.backend import select_attention_backend
from helix.worker.kernels import torch_ops as reference
from helix.worker.kernels import triton_ops as fused
from helix.worker.kernels.backend import LayerKernels, select_layer_kernels
from helix.worker.kv_cache import allocate_kv_cache
from helix.worker.models import ArchConfig, LlamaForCausalLM
from helix.worker.models.arch import RopeConfig
from helix.worker.models.llama import init_dummy_weights
from helix.worker.models.rope import RotaryEmbedding
from tests.gpu.kernel_checks import fresh_seed, poison_allocator, report

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fused.AVAILABLE), reason="needs CUDA and Triton")
DEVICE = torch.device("cuda")
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
TOKENS = [1, 3, 17, 256, 1000]
HIDDEN_SIZES = [2048, 4096]
INTERMEDIATE_SIZES = [2048, 5632]  # 5632 (TinyLlama) ends in a partial column tile
HEAD_DIMS = [64, 128]
GQA_RATIOS = [1, 4, 8]
NUM_HEADS = 32
MAX_POSITIONS = 4096
EPS = 1e-5
# dtype -> (per-element rtol, largest fraction of elements allowed to differ)
TOLERANCES = {torch.bfloat16: (2.0 ** -6, 0.01), torch.float16: (2.0 ** -9, 0.01), torch.float32: (1e-5, 1.0)}
ATOL = 1e-6
ACCURACY_RATIO = 1.25  # fused model's logit error over the bf16 reference's, both against fp32
DECISIVE_SHARE = 0.5  # least share of rows whose argmax the logit differences cannot swap
_ERRORS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_errors(request: pytest.FixtureRequest):
    yield
    if not _ERRORS:
        return
    worst = _worst_errors()
    lines = [f"fused kernels: {len(_ERRORS)} comparisons; worst per kernel and dtype:"]
    lines += [f"  {key}: " + ", ".join(f"{s} {v:.3e}" for s, v in stats.items())
              for key, stats in sorted(worst.items())]
    report(request, lines, "fused_kernel_errors.json", {"worst": worst, "all": _ERRORS})


def _worst_errors() -> dict[str, dict[str, float]]:
    """The largest of each recorded statistic per kernel and dtype (the key before "|")."""
    worst: dict[str, dict[str, float]] = {}
    for name, stats in _ERRORS.items():
        key = name.split("|")[0]
        worst[key] = {s: max(v, worst.get(key, {}).get(s, 0.0)) for s, v in stats.items()}
    return worst


def _randn(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=generator) * scale).to(DEVICE, dtype)


def _check(name: str, out: torch.Tensor, ref: torch.Tensor, exact: bool, seed: int) -> None:
    """Record the errors of `out` against `ref` and assert the module docstring's bounds."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, f"{name}: {out.dtype}{tuple(out.shape)}"
    assert not out.isnan().any(), f"{name}: unwritten output (seed {seed})"
    diff = (out.double() - ref.double()).abs()
    stats = {"max_abs": diff.max().item() if diff.numel() else 0.0,
             "max_rel": (diff / ref.double().abs().clamp_min(ATOL)).max().item() if diff.numel() else 0.0,
             "mismatched": (diff > 0).double().mean().item() if diff.numel() else 0.0}
    _ERRORS[f"{name.split('[')[0]}-{str(out.dtype).removeprefix('torch.')}|{name}"] = stats
    if exact:
        assert torch.equal(out, ref), f"{name}: not bitwise equal, {stats} (seed {seed})"
        return
    rtol, max_mismatched = TOLERANCES[out.dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=ATOL, msg=lambda m: f"{name} (seed {seed}): {m}")
    assert stats["mismatched"] <= max_mismatched, f"{name}: {stats} (seed {seed})"


# ----------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_rms_norm(num_tokens: int, hidden: int, dtype: torch.dtype) -> None:
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = _randn((num_tokens, hidden), dtype, gen, scale=3.0)
    weight = (1.0 + _randn((hidden,), torch.float32, gen, scale=0.1)).to(dtype)
    poison_allocator(DEVICE)
    out = fused.rms_norm(x, weight, EPS)
    _check(f"rms_norm[{num_tokens}x{hidden}]", out, reference.rms_norm(x, weight, EPS), exact=False, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_fused_add_rms_norm(num_tokens: int, hidden: int, dtype: torch.dtype) -> None:
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    x = _randn((num_tokens, hidden), dtype, gen)
    residual = _randn((num_tokens, hidden), dtype, gen, scale=3.0)
    weight = (1.0 + _randn((hidden,), torch.float32, gen, scale=0.1)).to(dtype)
    x_before, residual_before = x.clone(), residual.clone()
    poison_allocator(DEVICE)
    out, new_residual = fused.fused_add_rms_norm(x, residual, weight, EPS)
    ref_out, ref_residual = reference.fused_add_rms_norm(x, residual, weight, EPS)
    name = f"{num_tokens}x{hidden}"
    _check(f"add_residual[{name}]", new_residual, ref_residual, exact=True, seed=seed)
    _check(f"fused_add_rms_norm[{name}]", out, ref_out, exact=False, seed=seed)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before), "inputs were written"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", GQA_RATIOS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_rotary_embedding(num_tokens: int, head_dim: int, ratio: int, dtype: torch.dtype) -> None:
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads = NUM_HEADS // ratio
    # q and k as strided views of one fused projection, as the model produces them.
    widths = (NUM_HEADS * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
    qkv = _randn((num_tokens, sum(widths)), dtype, gen, scale=2.0)
    q, k, _ = qkv.split(widths, dim=-1)
    q, k = q.view(num_tokens, NUM_HEADS, head_dim), k.view(num_tokens, num_kv_heads, head_dim)
    positions = torch.randint(0, MAX_POSITIONS, (num_tokens,), generator=gen).to(DEVICE)
    rotary = RotaryEmbedding(RopeConfig(theta=10000.0), head_dim, MAX_POSITIONS, dtype, reference).to(DEVICE)
    qkv_before = qkv.clone()
    poison_allocator(DEVICE)
    q_out, k_out = fused.rotary_embedding(positions, q, k, rotary.cos, rotary.sin)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, rotary.cos, rotary.sin)
    name = f"{num_tokens}x{NUM_HEADS}/{num_kv_heads}x{head_dim}"
    _check(f"rotary_q[{name}]", q_out, q_ref, exact=True, seed=seed)
    _check(f"rotary_k[{name}]", k_out, k_ref, exact=True, seed=seed)
    assert torch.equal(qkv, qkv_before), "inputs were written"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", GQA_RATIOS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_rotary_embedding_and_write_kv(num_tokens: int, head_dim: int, ratio: int, dtype: torch.dtype) -> None:
    """One launch gives the reference's rotated q and cache, bit for bit: the
    rotated k and v at each token's slot, nothing for slot -1, every other
    entry of the cache untouched."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, block_size, num_blocks = NUM_HEADS // ratio, 16, 80
    widths = (NUM_HEADS * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
    qkv = _randn((num_tokens, sum(widths)), dtype, gen, scale=2.0)
    q, k, v = (part.view(num_tokens, -1, head_dim) for part in qkv.split(widths, dim=-1))
    positions = torch.randint(0, MAX_POSITIONS, (num_tokens,), generator=gen).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[1::3] = -1  # graph padding: written nowhere
    slots = slots.to(DEVICE)
    rotary = RotaryEmbedding(RopeConfig(theta=10000.0), head_dim, MAX_POSITIONS, dtype, reference).to(DEVICE)
    cache = _randn((2, num_blocks, block_size, num_kv_heads, head_dim), dtype, gen, scale=1.0)
    expected = cache.clone()
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, rotary.cos, rotary.sin)
    real = slots >= 0
    attention_reference.write_kv(k_ref[real], v[real], expected, slots[real])
    q_out = fused.rotary_embedding_and_write_kv(positions, q, k, v, rotary.cos, rotary.sin, cache, slots,
                                                attention_reference.write_kv)
    name = f"{num_tokens}x{NUM_HEADS}/{num_kv_heads}x{head_dim}"
    _check(f"rotary_write_q[{name}]", q_out, q_ref, exact=True, seed=seed)
    _check(f"rotary_write_cache[{name}]", cache, expected, exact=True, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", INTERMEDIATE_SIZES)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_silu_and_mul(num_tokens: int, inter: int, dtype: torch.dtype) -> None:
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    gate_up = _randn((num_tokens, 2 * inter), dtype, gen, scale=3.0)
    poison_allocator(DEVICE)
    out = fused.silu_and_mul(gate_up)
    _check(f"silu_and_mul[{num_tokens}x{inter}]", out, reference.silu_and_mul(gate_up), exact=False, seed=seed)


def _exact_scale_rows(num_tokens: int, hidden: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A residual stream [T, hidden] whose row t is +-2^k_t (k_t in [-3, 3], one per row): its
    sum of squares is exact in any order, so with eps 0 every row's 1/rms is 2^-k_t, up to
    the fp32 ulps that rsqrt implementations may differ by."""
    signs = torch.randint(0, 2, (num_tokens, hidden), generator=gen) * 2 - 1
    exponents = torch.randint(-3, 4, (num_tokens, 1), generator=gen).float()
    return (signs * torch.pow(2.0, exponents)).to(DEVICE, dtype)


def _few_bit(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Values with at most 5 significant bits (multiples of 1/4 in [-4, 4]): times a power of
    two off by a few fp32 ulps they round back to the exact product in every dtype."""
    return (torch.randint(-16, 17, shape, generator=gen) / 4).to(DEVICE, dtype)


def _folded_qkv(num_tokens: int, head_dim: int, dtype: torch.dtype, gen: torch.Generator, exact: bool):
    """(q, k, v) [T, heads, D] as strided views of one projection, few-bit where `exact`."""
    num_kv_heads = NUM_HEADS // 4
    widths = (NUM_HEADS * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim)
    shape = (num_tokens, sum(widths))
    qkv = _few_bit(shape, dtype, gen) if exact else _randn(shape, dtype, gen, scale=2.0)
    return tuple(part.view(num_tokens, -1, head_dim) for part in qkv.split(widths, dim=-1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("exact_scales", [True, False], ids=["power-of-two-rows", "random-rows"])
def test_folded_norm_scales_rotary_and_cache(exact_scales: bool, num_tokens: int, head_dim: int,
                                             dtype: torch.dtype) -> None:
    """With norm_of (folded norms), q, k and v are first scaled by 1/rms of their token's row.

    Power-of-two rows (eps 0) and few-bit inputs make every bf16/fp16 scaled input exact, so
    q and the cache equal the reference bit for bit: each token got its own row's scale.
    Elsewhere (fp32, where the rsqrt ulps stay; random rows with real eps, whose 1/rms sums in
    another order) the last bit of a scaled input may differ, and through RoPE's differences
    that bit can be the whole of a small output: there v, which is scaled and stored
    unrotated, is held to the 2-ulp bound."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    block_size, num_blocks = 16, 80
    q, k, v = _folded_qkv(num_tokens, head_dim, dtype, gen, exact_scales)
    stream = (_exact_scale_rows(num_tokens, 2048, dtype, gen) if exact_scales
              else _randn((num_tokens, 2048), dtype, gen, scale=5.0))
    eps = 0.0 if exact_scales else EPS
    positions = torch.randint(0, MAX_POSITIONS, (num_tokens,), generator=gen).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens].to(DEVICE)
    rotary = RotaryEmbedding(RopeConfig(theta=10000.0), head_dim, MAX_POSITIONS, dtype, reference).to(DEVICE)
    cache = _randn((2, num_blocks, block_size, k.shape[1], head_dim), dtype, gen, scale=1.0)
    expected = cache.clone()
    q_ref = reference.rotary_embedding_and_write_kv(positions, q, k, v, rotary.cos, rotary.sin, expected, slots,
                                                    attention_reference.write_kv, stream, eps)
    q_out = fused.rotary_embedding_and_write_kv(positions, q, k, v, rotary.cos, rotary.sin, cache, slots,
                                                attention_reference.write_kv, stream, eps)
    name = f"{num_tokens}x{NUM_HEADS}/{k.shape[1]}x{head_dim}"
    if exact_scales and dtype != torch.float32:
        _check(f"folded_rotary_q[{name}]", q_out, q_ref, exact=True, seed=seed)
        _check(f"folded_rotary_cache[{name}]", cache, expected, exact=True, seed=seed)
    else:
        _check(f"folded_scaled_v[{name}]", cache[1], expected[1], exact=False, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", INTERMEDIATE_SIZES)
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_folded_norm_scales_silu_and_mul(num_tokens: int, inter: int, dtype: torch.dtype) -> None:
    """gate_up scaled by 1/rms of power-of-two rows is exact, so the result is silu_and_mul's
    of the scaled input, within its bounds (the random-row rms is checked through v above)."""
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    gate_up = _few_bit((num_tokens, 2 * inter), dtype, gen)
    stream = _exact_scale_rows(num_tokens, 4096, dtype, gen)
    out = fused.silu_and_mul(gate_up, stream, 0.0)
    _check(f"folded_silu_and_mul[{num_tokens}x{inter}]", out, reference.silu_and_mul(gate_up, stream, 0.0),
           exact=False, seed=seed)


def test_zero_tokens() -> None:
    x = torch.empty((0, 2048), dtype=torch.bfloat16, device=DEVICE)
    weight = torch.ones(2048, dtype=torch.bfloat16, device=DEVICE)
    assert fused.rms_norm(x, weight, EPS).shape == (0, 2048)
    assert all(t.shape == (0, 2048) for t in fused.fused_add_rms_norm(x, x, weight, EPS))
    assert fused.silu_and_mul(x).shape == (0, 1024)
    rotary = RotaryEmbedding(RopeConfig(theta=10000.0), 64, 16, torch.bfloat16, reference).to(DEVICE)
    q, k = x.view(0, 32, 64), x.view(0, 32, 64)[:, :4]
    positions = torch.empty(0, dtype=torch.int64, device=DEVICE)
    q_out, k_out = fused.rotary_embedding(positions, q, k, rotary.cos, rotary.sin)
    assert q_out.shape == (0, 32, 64) and k_out.shape == (0, 4, 64)


def test_selection() -> None:
    assert select_layer_kernels(DEVICE, torch.bfloat16).name == "triton"
    assert select_layer_kernels(DEVICE, torch.bfloat16).folds_norms
    assert select_layer_kernels(torch.device("cpu"), torch.bfloat16).name == "torch"
    assert select_layer_kernels(DEVICE, torch.float64).name == "torch"


# ----------------------------------------------------------------------------- whole model

BLOCK_SIZE = 16
MAX_MODEL_LEN = 256
PROMPT_LENS = [17, 5, 33, 1]
DECODE_STEPS = 4
_LLAMA = ArchConfig(
    architecture="LlamaForCausalLM", vocab_size=512, hidden_size=512, intermediate_size=1408, num_layers=3,
    num_heads=8, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=MAX_MODEL_LEN,
    rope=RopeConfig(theta=10000.0), tie_word_embeddings=False, qkv_bias=False, mlp_bias=False, qk_norm=False,
    sliding_window=None)
ARCHS = {
    "llama": _LLAMA,
    # Qwen3: per-head q/k norms (PyTorch) ahead of the RoPE kernel, head_dim 128, QKV bias.
    "qwen3": dataclasses.replace(_LLAMA, architecture="Qwen3ForCausalLM", num_heads=4, num_kv_heads=4,
                                 head_dim=128, qkv_bias=True, qk_norm=True),
}


class PagedModel:
    """A model, its paged cache (in the model's dtype) and per-sequence token counts (sequence i
    owns a fixed run of blocks)."""

    def __init__(self, model: LlamaForCausalLM, dtype: torch.dtype):
        self.model = model
        self.blocks_per_seq = MAX_MODEL_LEN // BLOCK_SIZE
        num_blocks = len(PROMPT_LENS) * self.blocks_per_seq
        self.kv_cache = allocate_kv_cache(model.arch, num_blocks, BLOCK_SIZE, dtype, DEVICE)
        self.num_computed = [0] * len(PROMPT_LENS)

    def spans(self, new_tokens: list[list[int]]) -> list[SequenceSpan]:
        """One span per sequence; each table lists all of the sequence's blocks (a fixed width)."""
        tables = [list(range(i * self.blocks_per_seq, (i + 1) * self.blocks_per_seq)) for i in range(len(new_tokens))]
        return [SequenceSpan(table, done, len(new))
                for table, done, new in zip(tables, self.num_computed, new_tokens)]

    @torch.inference_mode()
    def step(self, new_tokens: list[list[int]]) -> torch.Tensor:
        """Run every sequence's new tokens; return the logits [num_seqs, vocab] of each span's last token."""
        meta = build_attention_metadata(self.spans(new_tokens), BLOCK_SIZE, DEVICE)
        input_ids = torch.tensor([t for new in new_tokens for t in new], device=DEVICE)
        hidden = self.model(input_ids, self.kv_cache, meta)
        self.num_computed = [done + len(new) for done, new in zip(self.num_computed, new_tokens)]
        return self.model.compute_logits(hidden[meta.last_token_indices])


def _build(arch: ArchConfig, kernels: LayerKernels, dtype: torch.dtype) -> LlamaForCausalLM:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with DEVICE:
            model = LlamaForCausalLM(arch, dtype, select_attention_backend(DEVICE), kernels)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


@dataclasses.dataclass
class ModelTrio:
    """The same random weights (norm weights included) three ways."""
    oracle: PagedModel     # fp32, reference kernels
    reference: PagedModel  # bf16, reference kernels
    fused: PagedModel      # bf16, fused kernels (norms folded where the architecture allows)


def _models(arch: ArchConfig, seed: int) -> ModelTrio:
    ref = _build(arch, LayerKernels("torch", reference), torch.bfloat16)
    init_dummy_weights(ref, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
    oracle = _build(arch, LayerKernels("torch", reference), torch.float32)
    oracle.load_state_dict(ref.state_dict())
    model = _build(arch, LayerKernels("triton", fused, folds_norms=True), torch.bfloat16)
    model.load_state_dict(ref.state_dict())  # folds the norms where the architecture allows
    assert model.model.norm.kernels is fused and ref.model.norm.kernels is reference
    assert model.folds_norms == arch.norms_foldable and not ref.folds_norms
    return ModelTrio(PagedModel(oracle, torch.float32), PagedModel(ref, torch.bfloat16),
                     PagedModel(model, torch.bfloat16))


def _prompts(arch: ArchConfig, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(arch.vocab_size) for _ in range(n)] for n in PROMPT_LENS]


def _relative_error(logits: torch.Tensor, oracle: torch.Tensor) -> float:
    return ((logits.float() - oracle).norm() / oracle.norm()).item()


def _compare_logits(name: str, logits: torch.Tensor, ref: torch.Tensor, oracle: torch.Tensor) -> int:
    """Assert logits [rows, vocab] at most ACCURACY_RATIO times as far from the fp32 oracle's as
    the bf16 reference's are, and the oracle's argmax in every decisive row (the oracle's top-2
    gap over twice the row's largest difference: no differences that small can swap them).
    Returns the number of decisive rows."""
    assert not logits.isnan().any(), name
    err, ref_err = _relative_error(logits, oracle), _relative_error(ref, oracle)
    _ERRORS[f"model_logits|{name}"] = {"rel_norm": err, "reference_rel_norm": ref_err}
    assert err <= ACCURACY_RATIO * ref_err, f"{name}: relative logit error {err:.3e}, reference's {ref_err:.3e}"
    top2 = oracle.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * (logits.float() - oracle).abs().amax(dim=-1)
    assert torch.equal(logits.argmax(-1)[decisive], oracle.argmax(-1)[decisive]), name
    return int(decisive.sum().item())


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
def test_model_fused_matches_reference(arch_name: str) -> None:
    """Prefill then greedy decode (the fp32 oracle's tokens fed to all three): logits as close to
    fp32's as the bf16 reference's, and the same argmax."""
    arch = ARCHS[arch_name]
    models = _models(arch, seed=0)
    new_tokens = _prompts(arch, seed=1)
    decisive = 0
    for step in range(1 + DECODE_STEPS):
        oracle_logits = models.oracle.step(new_tokens)
        decisive += _compare_logits(f"{arch_name} step {step}", models.fused.step(new_tokens),
                                    models.reference.step(new_tokens), oracle_logits)
        new_tokens = [[t] for t in oracle_logits.argmax(-1).tolist()]
    assert decisive >= DECISIVE_SHARE * len(PROMPT_LENS) * (1 + DECODE_STEPS), f"only {decisive} decisive rows"


class CapturedDecode:
    """`model(input_ids, kv_cache, meta)` of a PagedModel captured in a CUDA graph for one decode
    token per sequence, as helix.worker.cuda_graphs captures it: static input buffers, split-KV
    pinned to 1 (the eager launcher's choice too: contexts stay under 256 keys)."""

    def __init__(self, paged: PagedModel):
        self.paged = paged
        num_seqs = len(paged.num_computed)
        meta = build_attention_metadata(paged.spans([[0]] * num_seqs), BLOCK_SIZE, DEVICE)
        self.meta = dataclasses.replace(meta, num_splits=1)
        self.input_ids = torch.zeros(num_seqs, dtype=torch.int64, device=DEVICE)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode():
            # Warm-up compiles every kernel; it and the capture write K/V only at the slots
            # of the next decode token, which every later step rewrites before reading.
            paged.model(self.input_ids, paged.kv_cache, self.meta)
            torch.cuda.synchronize()
            with torch.cuda.graph(self.graph):
                self.hidden = paged.model(self.input_ids, paged.kv_cache, self.meta)

    def replay(self, new_tokens: list[list[int]]) -> torch.Tensor:
        """Logits [num_seqs, vocab] of one decode step; does not advance the PagedModel."""
        meta = build_attention_metadata(self.paged.spans(new_tokens), BLOCK_SIZE, DEVICE)
        for name in ("positions", "slot_mapping", "block_tables", "seq_lens", "query_start_loc"):
            getattr(self.meta, name).copy_(getattr(meta, name))
        self.input_ids.copy_(torch.tensor([t for new in new_tokens for t in new], device=DEVICE))
        self.graph.replay()
        with torch.inference_mode():
            return self.paged.model.compute_logits(self.hidden)


def test_model_fused_in_cuda_graph() -> None:
    """Decode steps replayed from a captured graph of the fused model equal its eager forward
    (same kernels, same launches) and are as close to fp32 as the reference model's."""
    arch = ARCHS["llama"]
    models = _models(arch, seed=2)
    new_tokens = _prompts(arch, seed=3)
    oracle_logits = models.oracle.step(new_tokens)
    models.reference.step(new_tokens)
    models.fused.step(new_tokens)
    captured = CapturedDecode(models.fused)
    decisive = 0
    for step in range(DECODE_STEPS):
        new_tokens = [[t] for t in oracle_logits.argmax(-1).tolist()]
        graph_logits = captured.replay(new_tokens)
        eager_logits = models.fused.step(new_tokens)  # rewrites the K/V the replay wrote, with the same values
        oracle_logits = models.oracle.step(new_tokens)
        _ERRORS[f"graph_vs_eager|step {step}"] = {"max_abs": (graph_logits - eager_logits).abs().max().item()}
        torch.testing.assert_close(graph_logits, eager_logits, rtol=1e-3, atol=1e-3)
        decisive += _compare_logits(f"graph step {step}", graph_logits, models.reference.step(new_tokens),
                                    oracle_logits)
    assert decisive >= DECISIVE_SHARE * len(PROMPT_LENS) * DECODE_STEPS, f"only {decisive} decisive rows"
