"""Helix: a serving engine for Llama-family causal language models."""

__version__ = "0.1.0"
