"""Scheduler limits and policy."""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class SchedulerConfig:
    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    policy: str = "fcfs"
    watermark: float = 0.01  # fraction of GPU blocks admission leaves free for running requests
    check_invariants: bool = False  # verify block accounting after every step (debug)
    num_scheduler_steps: int = 1  # decode tokens per step where every request only decodes
    # Most requests a step of chained speculative rounds may hold (None: any): beyond
    # what the graphs cover, each round would wait for the host.
    max_chained_seqs: int | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs: must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens: must be >= 1, got {self.max_num_batched_tokens}")
        if self.num_scheduler_steps < 1:
            raise ValueError(f"num_scheduler_steps: must be >= 1, got {self.num_scheduler_steps}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: must be one of {POLICIES}, got {self.policy!r}")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark: must be in [0, 1), got {self.watermark}")
