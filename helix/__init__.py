"""Helix: a serving engine for Llama-family causal language models."""

from helix.engine_args import EngineArgs
from helix.llm import LLM
from helix.outputs import CompletionOutput, RequestOutput
from helix.sampling_params import RequestOutputKind, SamplingParams
from helix.structured_output import StructuredOutputs

__version__ = "0.1.0"

__all__ = ["LLM", "CompletionOutput", "EngineArgs", "RequestOutput", "RequestOutputKind", "SamplingParams",
           "StructuredOutputs", "__version__"]
