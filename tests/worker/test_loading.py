from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from helix.worker.device import resolve_device, resolve_dtype
from helix.worker.kv_cache import bytes_per_block
from helix.worker.models import SUPPORTED_ARCHITECTURES, ArchConfig, ModelNotFoundError, build_model, model_source


def test_unsupported_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    GPT2Config(n_layer=1, n_embd=8, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        ArchConfig.from_hf(model_source(str(tmp_path), "auto").hf_config)
    for name in SUPPORTED_ARCHITECTURES:
        assert name in str(error.value)


def test_uncached_hub_id_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError, match="neither a local directory nor available"):
        model_source("helix-test/definitely-not-cached", "auto")


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        model_source(str(tmp_path / "nope"), "auto")


def test_directory_without_safetensors_refuses_to_load(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    (tmp_path / "config.json").write_text((tiny_model_dirs["llama"] / "config.json").read_text())
    source = model_source(str(tmp_path), "auto")
    with pytest.raises(ModelNotFoundError, match="no \\*.safetensors"):
        build_model(source, "auto", torch.device("cpu"), torch.float32)


def test_sharded_checkpoint_loads_like_the_single_file(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    from safetensors.torch import load_file, save_file

    source_dir = tiny_model_dirs["llama"]
    tensors = load_file(str(source_dir / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, shard_names in halves.items():
        save_file({n: tensors[n].contiguous() for n in shard_names}, str(tmp_path / file))
    weight_map = {n: file for file, shard_names in halves.items() for n in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((source_dir / "config.json").read_text())
    single = build_model(model_source(str(source_dir), "auto"), "auto", torch.device("cpu"), torch.float32)
    sharded = build_model(model_source(str(tmp_path), "auto"), "auto", torch.device("cpu"), torch.float32)
    for (name, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_missing_a_weight_is_refused(tmp_path: Path, tiny_model_dirs: dict[str, Path]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_model_dirs["llama"] / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_model_dirs["llama"] / "config.json").read_text())
    with pytest.raises(ValueError, match="missing weights.*qkv_proj"):
        build_model(model_source(str(tmp_path), "auto"), "auto", torch.device("cpu"), torch.float32)


def test_dummy_preset_has_the_real_shape() -> None:
    source = model_source("llama-68m", "dummy")
    model = build_model(source, "dummy", torch.device("cpu"), torch.float32)
    num_params = sum(p.numel() for p in model.parameters())
    assert 67_000_000 < num_params < 69_000_000
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_kv_block_bytes_follow_the_shape() -> None:
    arch = ArchConfig.from_hf(model_source("tinyllama-1.1b", "dummy").hf_config)
    # 22 layers * (K and V) * 16 slots * 4 kv heads * 64 dims * 2 bytes
    assert bytes_per_block(arch, 16, torch.bfloat16) == 22 * 2 * 16 * 4 * 64 * 2


def test_device_auto_falls_back_to_cpu_with_fp32() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = resolve_device("auto")
    assert device.type in ("cpu", "privateuseone")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_directml_without_the_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import helix.worker.device as device_module

    monkeypatch.setattr(device_module, "directml_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'helix\[directml\]'"):
        resolve_device("directml")


def test_unknown_device_and_dtype_are_value_errors() -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
