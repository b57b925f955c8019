"""The benchmark suite's roofline arithmetic and its transformers baselines, on
CPU with a tiny Llama (hidden 64, 2 layers, vocabulary 256) in fp32.

The compiled baseline is exercised with torch.compile's "eager" backend and
transformers' flag for compiling off CUDA: inductor itself takes ~30 s to
compile even this model on 2 CPU cores. The GPU suite uses inductor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

from benchmarks.suite import hf_baselines, roofline
from helix.worker.models.presets import PRESETS

TINY: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "vocab_size": 256,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
CPU = torch.device("cpu")


@pytest.mark.parametrize("overrides", [
    {}, {"tie_word_embeddings": True}, {"head_dim": 32, "attention_bias": True, "mlp_bias": True},
    {"num_key_value_heads": None},
], ids=["untied", "tied", "head_dim_and_biases", "no_gqa"])
def test_num_parameters_matches_transformers(overrides: dict[str, Any]) -> None:
    config = {**TINY, **overrides}
    model = LlamaForCausalLM(LlamaConfig(**config))
    assert roofline.num_parameters(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_num_parameters_of_each_preset_matches_transformers(name: str) -> None:
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(LlamaConfig(**PRESETS[name]))
    assert roofline.num_parameters(PRESETS[name]) == sum(p.numel() for p in model.parameters())


def test_decode_bytes_per_step_reads_weights_once_and_each_sequences_cache() -> None:
    table = 256 * 64
    weights = roofline.num_parameters(TINY) - table  # untied: the embedding table is not read, only rows
    kv_per_token = 2 * 2 * 2 * 16 * 2  # K and V, 2 layers, 2 KV heads, head_dim 64 / 4, 2 bytes
    assert roofline.decode_bytes_per_step(TINY) == 2 * weights
    assert roofline.decode_bytes_per_step(TINY, 2, 100, batch=3) == 2 * weights + 3 * 100 * kv_per_token
    tied = {**TINY, "tie_word_embeddings": True}  # the table is the lm_head: read in full, once
    assert roofline.decode_bytes_per_step(tied, 4) == 4 * roofline.num_parameters(tied)


def test_roofline_tokens_per_s() -> None:
    assert roofline.roofline_tokens_per_s(4e12, 2_000_000_000) == 2000.0
    assert roofline.roofline_tokens_per_s(4e12, 2_000_000_000, batch=8) == 16000.0


def test_copy_bandwidth_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        roofline.copy_bandwidth_bytes_per_s(CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_copy_bandwidth_on_cuda_is_plausible() -> None:
    bandwidth = roofline.copy_bandwidth_bytes_per_s(torch.device("cuda"), size_bytes=1 << 26, repeats=5)
    assert 1e10 < bandwidth < 1e14


def test_build_hf_model_is_small_random_and_finite_in_bf16_at_depth() -> None:
    deep = {**TINY, "num_hidden_layers": 22, "hidden_size": 128, "intermediate_size": 352}
    model = hf_baselines.build_hf_model(deep, torch.bfloat16, CPU)
    weight = model.model.layers[0].mlp.up_proj.weight
    assert model.dtype == torch.bfloat16 and not model.training
    assert 0.015 < weight.float().std().item() < 0.025
    logits = model(torch.arange(1, 33).unsqueeze(0)).logits
    assert torch.isfinite(logits).all()


@pytest.fixture
def tiny_model() -> Iterator[LlamaForCausalLM]:
    model = hf_baselines.build_hf_model(TINY, torch.float32, CPU)
    yield model
    torch._dynamo.reset()  # compiled forwards do not outlive their test


def _record_generate_lengths(model: LlamaForCausalLM, prompt_len: int) -> list[int]:
    """Wrap `model.generate` to record how many tokens each call produced."""
    lengths: list[int] = []
    generate = model.generate

    def recording_generate(*args: Any, **kwargs: Any) -> torch.Tensor:
        output = generate(*args, **kwargs)
        lengths.append(output.shape[1] - prompt_len)
        return output

    model.generate = recording_generate  # type: ignore[method-assign]
    return lengths


def test_hf_decode_eager_generates_exactly_new_tokens(tiny_model: LlamaForCausalLM) -> None:
    lengths = _record_generate_lengths(tiny_model, prompt_len=16)
    result = hf_baselines.hf_decode_tokens_per_s(tiny_model, prompt_len=16, new_tokens=24, repeats=2)
    assert result["decode_tok_s"] > 0 and result["end_to_end_tok_s"] > 0 and result["prefill_ms"] > 0
    assert result["repeats"] == 2 and result["cache"] == "dynamic"
    assert lengths == [24, 1, 24, 1, 24, 1]  # warm-up, then two timed (full, first-token) pairs


def test_hf_decode_compiled_uses_a_static_cache_and_compiles(tiny_model: LlamaForCausalLM) -> None:
    compile_config = CompileConfig(backend="eager")
    compile_config._compile_all_devices = True  # type: ignore[assignment]  # transformers: compile off CUDA (tests)
    graphs_before = counters["stats"]["unique_graphs"]
    lengths = _record_generate_lengths(tiny_model, prompt_len=16)
    result = hf_baselines.hf_decode_tokens_per_s(tiny_model, prompt_len=16, new_tokens=24, compiled=True,
                                                 repeats=1, compile_config=compile_config)
    assert counters["stats"]["unique_graphs"] > graphs_before
    assert result["decode_tok_s"] > 0 and result["cache"] == "static" and result["warmup_s"] > 0
    assert lengths == [24, 24, 1, 24, 1]  # two warm-ups when compiled


def test_hf_decode_stops_timing_at_the_time_cap(tiny_model: LlamaForCausalLM) -> None:
    result = hf_baselines.hf_decode_tokens_per_s(tiny_model, prompt_len=8, new_tokens=4, repeats=50,
                                                 max_seconds=0.0)
    assert result["repeats"] == 1


def test_hf_generate_batch_gives_each_prompt_exactly_new_tokens(tiny_model: LlamaForCausalLM) -> None:
    prompts = [[3, 4, 5], list(range(10, 27)), list(range(40, 80))]
    generate_batch = tiny_model.generate_batch
    seen: list[list[int]] = []

    def recording_generate_batch(*args: Any, **kwargs: Any) -> dict[str, Any]:
        outputs = generate_batch(*args, **kwargs)
        seen.append([len(output.generated_tokens) for output in outputs.values()])
        return outputs

    tiny_model.generate_batch = recording_generate_batch  # type: ignore[method-assign]
    result = hf_baselines.hf_generate_batch_throughput(  # no CUDA graphs: transformers would capture empty ones
        tiny_model, prompts, new_tokens=20, warmup_requests=2, warmup_tokens=3, num_blocks=16, max_batch_tokens=256,
        use_cuda_graph=False)  # for a CPU model on a CUDA host
    assert seen == [[3, 3], [20, 20, 20]]
    assert result["output_tokens"] == 60 and result["requests"] == 3 and result["prompt_tokens"] == 60
    assert result["output_tok_s"] > 0 and result["seconds"] > 0
