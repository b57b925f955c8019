"""Find a model, read its config, build it on a device and fill its weights.

Weights come only from safetensors files (never pickles). A name that is not
a local directory is looked up in the local Hugging Face cache, or fetched
where the machine has a network; either failure is one clear message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from helix.worker.attention.backend import select_attention_backend
from helix.worker.models.arch import ArchConfig
from helix.worker.models.llama import LlamaForCausalLM, init_dummy_weights
from helix.worker.models.presets import PRESETS

_SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


class ModelNotFoundError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSource:
    """Where a model's config (and, unless dummy, weights and tokenizer) come from."""

    hf_config: PretrainedConfig
    directory: Path | None  # None for a named preset


def resolve_model_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model {model!r} is not a directory")
    return _snapshot_from_hub(model)


def _snapshot_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_SNAPSHOT_PATTERNS))
    except Exception as error:  # offline, uncached, unknown id, gated: all end the same way
        raise ModelNotFoundError(
            f"model {repo_id!r} is neither a local directory nor available from the Hugging Face "
            f"hub cache ({type(error).__name__}); download it first, or pass a local path") from None


def model_source(model: str, load_format: str) -> ModelSource:
    if load_format == "dummy" and model in PRESETS:
        return ModelSource(hf_config=_config_from_dict(PRESETS[model]), directory=None)
    directory = resolve_model_dir(model)
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"model directory {str(directory)!r} has no config.json")
    return ModelSource(hf_config=AutoConfig.from_pretrained(directory), directory=directory)


def _config_from_dict(values: dict[str, Any]) -> PretrainedConfig:
    values = dict(values)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


def build_model(source: ModelSource, load_format: str, device: torch.device, dtype: torch.dtype,
                seed: int = 0) -> LlamaForCausalLM:
    arch = ArchConfig.from_hf(source.hf_config)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(arch, dtype, select_attention_backend(device))
    finally:
        torch.set_default_dtype(previous_dtype)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    else:
        assert source.directory is not None
        model.load_weights(iter_safetensors(source.directory))
    return model.eval()


def iter_safetensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a single-file or sharded safetensors checkpoint."""
    for file in _safetensors_files(directory):
        with safe_open(str(file), framework="pt") as reader:
            for name in reader.keys():
                yield name, reader.get_tensor(name)


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(
            f"no *.safetensors weights in {str(directory)!r} (Helix does not load pickled checkpoints)")
    return files
