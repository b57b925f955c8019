"""A draft model must speak the target's vocabulary, token for token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from helix.worker.models import ArchConfig

_SAMPLE_TEXT = "Speculative decoding: the draft proposes, the target verifies. 12345 éß 你好 \n\t<>"


def check_draft_compatible(target: ArchConfig, draft: ArchConfig, target_tokenizer: Any,
                           draft_directory: Path | None) -> None:
    """Raise ValueError unless vocab sizes match and both tokenizers map a sample alike."""
    if target.vocab_size != draft.vocab_size:
        raise ValueError(f"draft_model: vocabulary size {draft.vocab_size} differs from the target's "
                         f"{target.vocab_size}; draft and target must share a tokenizer")
    if target_tokenizer is None or draft_directory is None:
        return
    draft_tokenizer = AutoTokenizer.from_pretrained(draft_directory)
    target_ids = target_tokenizer.encode(_SAMPLE_TEXT, add_special_tokens=False)
    draft_ids = draft_tokenizer.encode(_SAMPLE_TEXT, add_special_tokens=False)
    if target_ids != draft_ids:
        raise ValueError("draft_model: its tokenizer maps text to different token ids than the target's; "
                         "draft and target must share a tokenizer")
    sample = sorted(target_tokenizer.get_vocab().items(), key=lambda item: item[1])[::97]
    draft_vocab = draft_tokenizer.get_vocab()
    mismatched = [token for token, token_id in sample if draft_vocab.get(token) != token_id]
    if mismatched:
        raise ValueError(f"draft_model: tokens {mismatched[:3]} have different ids in the draft's vocabulary")
