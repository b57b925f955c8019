"""A minimal driver for one Helix model on the paged cache, for tests: it
keeps per-sequence token counts, grows block tables and runs spans."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from helix.block_manager.block_pool import BlockPool
from helix.block_manager.block_table import BlockTables
from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.kv_cache import allocate_kv_cache
from helix.worker.models import LlamaForCausalLM


@dataclass
class PagedRunner:
    model: LlamaForCausalLM
    pool: BlockPool
    block_size: int = 4
    num_computed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tables = BlockTables(self.pool, self.block_size)
        self.kv_cache = allocate_kv_cache(self.model.arch, self.pool.num_blocks, self.block_size,
                                          torch.float32, torch.device("cpu"))

    @torch.no_grad()
    def step(self, chunks: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        """Append each sequence's new tokens; return logits [num_new, vocab] per sequence."""
        spans, token_ids = [], []
        for seq_id, new_tokens in chunks.items():
            done = self.num_computed.get(seq_id, 0)
            self.tables.grow(seq_id, done + len(new_tokens))
            spans.append(SequenceSpan(self.tables.get(seq_id), done, len(new_tokens)))
            token_ids.extend(new_tokens)
            self.num_computed[seq_id] = done + len(new_tokens)
        meta = build_attention_metadata(spans, self.block_size, torch.device("cpu"))
        hidden = self.model(torch.tensor(token_ids), self.kv_cache, meta)
        logits = self.model.compute_logits(hidden)
        starts = meta.query_start_loc_host
        return {seq_id: logits[starts[i]:starts[i + 1]] for i, seq_id in enumerate(chunks)}

    def greedy_decode(self, sequences: dict[str, list[int]], logits: dict[str, torch.Tensor],
                      num_steps: int) -> dict[str, torch.Tensor]:
        """`num_steps` greedy decode steps after a step that returned `logits`: each
        sequence's argmax token is appended to its list in `sequences`. Returns the
        last step's logits."""
        for _ in range(num_steps):
            next_tokens = {s: [int(logits[s][-1].argmax())] for s in sequences}
            for seq_id, token in next_tokens.items():
                sequences[seq_id] = sequences[seq_id] + token
            logits = self.step(next_tokens)
        return logits

    def release(self, seq_id: str) -> None:
        self.tables.free(seq_id)
        del self.num_computed[seq_id]
