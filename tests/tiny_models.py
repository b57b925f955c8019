"""Build and save tiny random Llama, Mistral, Qwen2 and Qwen3 models plus a
small byte-level BPE tokenizer, all locally, in Hugging Face format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

VOCAB_SIZE = 384
EOS_TOKEN = "<|endoftext|>"
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "To be, or not to be, that is the question.",
    "All the world's a stage, and all the men and women merely players.",
    "Speculative decoding verifies several draft tokens in one pass.",
    "Paged attention stores keys and values in fixed-size blocks.",
] * 20

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=0, pad_token_id=0,
)

# name -> (config class, model class, extra config)
ARCHITECTURES: dict[str, tuple[type, type, dict[str, Any]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": False}),
    "llama3_rope": (LlamaConfig, LlamaForCausalLM, {
        "tie_word_embeddings": True, "max_position_embeddings": 1024,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "rope_theta": 500000.0}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": 24, "tie_word_embeddings": False}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"tie_word_embeddings": True, "head_dim": 32}),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN)


def save_tiny_model(name: str, directory: Path, seed: int = 0) -> Path:
    config_cls, model_cls, extra = ARCHITECTURES[name]
    config = config_cls(**{**_COMMON, **extra})
    torch.manual_seed(seed)
    model = model_cls(config)
    _spread_weights(model)
    model.save_pretrained(directory, safe_serialization=True)
    build_tokenizer().save_pretrained(directory)
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0).save_pretrained(directory)
    return directory


def _spread_weights(model: torch.nn.Module) -> None:
    # transformers initialises with std 0.02, which makes every logit nearly
    # equal; larger weights give peaked, position-sensitive distributions so
    # that a wrong mask or position shows up as a different argmax.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.15)
