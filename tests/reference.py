"""Reference generation with transformers, one prompt at a time."""

from __future__ import annotations

import torch


@torch.no_grad()
def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Greedy tokens from transformers (a full forward per token), never stopping early."""
    device = next(model.parameters()).device
    tokens = list(prompt)
    for _ in range(max_new_tokens):
        tokens.append(int(model(torch.tensor([tokens], device=device)).logits[0, -1].argmax()))
    return tokens[len(prompt):]
