"""Llama-family models and how to load them."""

from helix.worker.models.arch import SUPPORTED_ARCHITECTURES, ArchConfig
from helix.worker.models.llama import LlamaForCausalLM
from helix.worker.models.loader import ModelNotFoundError, ModelSource, build_model, model_source

__all__ = ["SUPPORTED_ARCHITECTURES", "ArchConfig", "LlamaForCausalLM", "ModelNotFoundError",
           "ModelSource", "build_model", "model_source"]
