"""Turns a SchedulerOutput into tensors, runs the model and samples.

The runner owns the KV cache tensors (GPU and CPU swap) and per-request
sampling state (seeded generators). It reads requests, never writes them.
"""

from __future__ import annotations

import torch

from helix.scheduler.outputs import ModelOutput, ScheduledRequest, SchedulerOutput
from helix.scheduler.request import TokenLogprobs
from helix.worker.attention import SequenceSpan, build_attention_metadata
from helix.worker.kv_cache import allocate_kv_cache
from helix.worker.models import LlamaForCausalLM
from helix.worker.sampler import SamplingRow, sample, top_logprobs


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 device: torch.device, dtype: torch.dtype, seed: int = 0):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.kv_cache = allocate_kv_cache(model.arch, num_gpu_blocks, block_size, dtype, device)
        self.swap_cache = allocate_kv_cache(model.arch, num_cpu_blocks, block_size, dtype, torch.device("cpu"),
                                            pin_memory=device.type == "cuda")
        self._shared_generator = torch.Generator(device=device).manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> ModelOutput:
        self._drop_finished(step.finished_ids)
        self._swap(step.swap_out, self.kv_cache, self.swap_cache)
        self._swap(step.swap_in, self.swap_cache, self.kv_cache)
        if not step.scheduled:
            return ModelOutput(sampled={})
        hidden, meta = self._forward(step.scheduled)
        output = ModelOutput(sampled={})
        self._prompt_logprobs(step.scheduled, hidden, meta.query_start_loc_host, output)
        self._sample(step.scheduled, hidden, meta.query_start_loc_host, output)
        return output

    def _forward(self, scheduled: list[ScheduledRequest]):
        spans, token_ids = [], []
        for item in scheduled:
            spans.append(SequenceSpan(item.block_table, item.start, item.num_new_tokens))
            token_ids.extend(item.request.all_token_ids[item.start:item.start + item.num_new_tokens])
        meta = build_attention_metadata(spans, self.block_size, self.device)
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model(input_ids, self.kv_cache, meta), meta  # hidden: [num_tokens, hidden]

    def _sample(self, scheduled: list[ScheduledRequest], hidden: torch.Tensor, starts: tuple[int, ...],
                output: ModelOutput) -> None:
        sampling = [(i, item) for i, item in enumerate(scheduled) if item.samples]
        if not sampling:
            return
        rows_index = torch.tensor([starts[i + 1] - 1 for i, _ in sampling], device=self.device)
        logits = self.model.compute_logits(hidden[rows_index])  # [num_sampling, vocab]
        rows = [self._sampling_row(item) for _, item in sampling]
        for (_, item), token in zip(sampling, sample(logits, rows)):
            request_id = item.request.request_id
            output.sampled[request_id] = [token.token_id]
            if token.logprob is not None:
                output.logprobs[request_id] = [TokenLogprobs(token.token_id, token.logprob, token.top_logprobs)]

    def _sampling_row(self, item: ScheduledRequest) -> SamplingRow:
        request = item.request
        return SamplingRow(
            params=request.params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            stop_ids_before_min=(frozenset(request.params.stop_token_ids)
                                 | (frozenset() if request.params.ignore_eos else request.eos_token_ids)),
            generator=self._generator_for(request.request_id, request.params.seed),
        )

    def _generator_for(self, request_id: str, seed: int | None) -> torch.Generator:
        if seed is None:
            return self._shared_generator
        generator = self._request_generators.get(request_id)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self._request_generators[request_id] = generator
        return generator

    def _prompt_logprobs(self, scheduled: list[ScheduledRequest], hidden: torch.Tensor, starts: tuple[int, ...],
                         output: ModelOutput) -> None:
        """Log-probabilities of prompt tokens: logits at position p score the token at p + 1."""
        for i, item in enumerate(scheduled):
            request = item.request
            if not request.wants_prompt_logprobs:
                continue
            entries: list[TokenLogprobs | None] = [None] if item.start == 0 else []
            last_position = min(item.start + item.num_new_tokens, request.num_prompt_tokens - 1)
            if last_position > item.start:
                rows = hidden[starts[i]:starts[i] + last_position - item.start]
                logprobs = self.model.compute_logits(rows).log_softmax(dim=-1)
                targets = request.prompt_token_ids[item.start + 1:last_position + 1]
                for row, target in zip(logprobs, targets):
                    entries.append(TokenLogprobs(target, float(row[target]),
                                                 top_logprobs(row, request.params.prompt_logprobs or 0)))
            # After a recompute, positions scored before the preemption are not repeated.
            first_token = 0 if item.start == 0 else item.start + 1
            already = max(0, len(request.prompt_logprobs) - first_token)
            output.prompt_logprobs[request.request_id] = entries[already:]

    def _swap(self, pairs: list[tuple[int, int]], source: torch.Tensor, destination: torch.Tensor) -> None:
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=source.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=destination.device)
        # Dim 2 is the block dimension of [layers, 2, blocks, block_size, kv_heads, head_dim].
        destination[:, :, dst] = source[:, :, src].to(destination.device)

    def _drop_finished(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._request_generators.pop(request_id, None)
