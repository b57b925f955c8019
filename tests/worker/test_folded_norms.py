"""Norms folded into the projections after them (what the Triton kernel set does on
CUDA), run here with the PyTorch ops: the same logits as transformers, in fp32.

The tiny models are saved with random norm weights, so folding them changes the
projections' weights and a fold that went wrong could not pass as the identity.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helix.block_manager.block_pool import BlockPool
from helix.worker.attention.backend import select_attention_backend
from helix.worker.kernels import torch_ops
from helix.worker.kernels.backend import LayerKernels
from helix.worker.models import ArchConfig, LlamaForCausalLM, model_source
from helix.worker.models.loader import iter_safetensors
from tests.paged_runner import PagedRunner
from tests.tiny_models import ARCHITECTURES, VOCAB_SIZE
from tests.worker.test_model_exactness import assert_close, reference_logits

CPU = torch.device("cpu")
FOLDING = LayerKernels("torch", torch_ops, folds_norms=True)


@pytest.fixture(scope="module")
def random_norm_dirs(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models with norm weights drawn around 1 (transformers initialises them to 1)."""
    root = tmp_path_factory.mktemp("random-norms")
    generator = torch.Generator().manual_seed(0)
    directories = {}
    for name, directory in tiny_model_dirs.items():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith("norm.weight"):
                    param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
        model.save_pretrained(root / name)
        directories[name] = root / name
    return directories


def folding_model(directory: Path) -> LlamaForCausalLM:
    arch = ArchConfig.from_hf(model_source(str(directory), "auto").hf_config)
    model = LlamaForCausalLM(arch, torch.float32, select_attention_backend(CPU), FOLDING)
    model.load_weights(iter_safetensors(directory))
    return model.eval()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_folded_model_matches_transformers(arch: str, random_norm_dirs: dict[str, Path]) -> None:
    reference = AutoModelForCausalLM.from_pretrained(random_norm_dirs[arch], dtype=torch.float32).eval()
    model = folding_model(random_norm_dirs[arch])
    assert model.folds_norms == model.arch.norms_foldable
    if model.folds_norms:  # the weights moved into the projections
        assert all(torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
                   for layer in model.model.layers)
    rng = random.Random(4)
    sequences = {f"s{i}": [rng.randrange(1, VOCAB_SIZE) for _ in range(n)] for i, n in enumerate([1, 9, 30])}
    runner = PagedRunner(model, BlockPool(64))
    logits = runner.step(sequences)
    for seq_id, tokens in sequences.items():
        assert_close(logits[seq_id], reference_logits(reference, tokens))
    logits = runner.greedy_decode(sequences, logits, num_steps=12)
    for seq_id, tokens in sequences.items():
        assert_close(logits[seq_id], reference_logits(reference, tokens)[-1:])


def test_loading_a_state_dict_folds_it(random_norm_dirs: dict[str, Path]) -> None:
    """load_state_dict of unfolded weights folds them too (and a folded state dict
    loads unchanged: its norms are 1)."""
    folded = folding_model(random_norm_dirs["llama"])
    unfolded = LlamaForCausalLM(folded.arch, torch.float32, select_attention_backend(CPU),
                                LayerKernels("torch", torch_ops))
    unfolded.load_weights(iter_safetensors(random_norm_dirs["llama"]))
    assert not unfolded.folds_norms
    assert not torch.equal(unfolded.model.layers[0].input_layernorm.weight,
                           torch.ones_like(unfolded.model.layers[0].input_layernorm.weight))
    reloaded = LlamaForCausalLM(folded.arch, torch.float32, select_attention_backend(CPU), FOLDING)
    reloaded.load_state_dict(unfolded.state_dict())
    for name, tensor in folded.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    reloaded.load_state_dict(folded.state_dict())
    for name, tensor in folded.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
