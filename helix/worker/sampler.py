"""Turn logits into tokens: the request's transforms, then greedy or sampled.

`transform_logits` is the single definition of a request's distribution
(penalties, logit_bias, min_tokens, a grammar's mask, temperature, top-k,
top-p, min-p); the
speculative rejection sampler applies the same function to draft and target
logits so both sides of the acceptance test see the same transforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from helix.sampling_params import SamplingParams
from helix.structured_output import GrammarMatcher
from helix.worker.device import HostCopy, to_device


@dataclass(frozen=True)
class SamplingRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    stop_ids_before_min: frozenset[int]  # EOS + stop_token_ids, masked until min_tokens is reached
    generator: torch.Generator | None  # per-request for seeded requests, else shared
    # Structured output: has consumed the request's output, a prefix of output_token_ids
    # (the rest are drafts under verification).
    grammar: GrammarMatcher | None = None


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    logprob: float | None
    top_logprobs: dict[int, float] | None


def transform_logits(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """[n, vocab] fp32 logits -> logits of each request's sampling distribution.

    Greedy rows get penalties, bias and min_tokens only (no temperature or
    filters), so their argmax is the greedy token.
    """
    edited = [i for i, row in enumerate(rows) if _edits_logits(row)]
    temperatures = [r.params.temperature if not r.params.greedy else 1.0 for r in rows]
    scaled = any(t != 1.0 for t in temperatures)
    if not edited and not scaled:
        return _apply_filters(logits, rows)  # the common greedy step: no copy, no edits
    logits = logits.clone()
    for i in edited:
        _apply_penalties(logits[i], rows[i])
        _apply_bias_and_min_tokens(logits[i], rows[i])
        if rows[i].grammar is not None:
            _apply_grammar(logits[i], rows[i].grammar, rows[i].output_token_ids)
    if scaled:
        logits.div_(to_device(temperatures, logits.dtype, logits.device).unsqueeze(1))
    return _apply_filters(logits, rows)


def takes_raw_argmax(row: SamplingRow) -> bool:
    """Whether the row's token is the argmax of the raw logits and nothing else is
    read from them: greedy, with nothing editing its logits and no logprobs."""
    return row.params.greedy and row.params.logprobs is None and not _edits_logits(row)


def _edits_logits(row: SamplingRow) -> bool:
    """Whether penalties, logit_bias, min_tokens or a grammar change this row's logits."""
    params = row.params
    return (params.repetition_penalty != 1.0 or row.grammar is not None
            or bool((params.presence_penalty or params.frequency_penalty) and row.output_token_ids)
            or bool(params.logit_bias)
            or (len(row.output_token_ids) < params.min_tokens and bool(row.stop_ids_before_min)))


def _apply_penalties(row_logits: torch.Tensor, row: SamplingRow) -> None:
    params = row.params
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.prompt_token_ids) | set(row.output_token_ids)),
                            dtype=torch.long, device=row_logits.device)
        values = row_logits[seen]
        row_logits[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                       values * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and row.output_token_ids:
        ids, counts = torch.tensor(list(row.output_token_ids), device=row_logits.device).unique(return_counts=True)
        row_logits[ids] -= params.frequency_penalty * counts.to(row_logits.dtype) + params.presence_penalty


def _apply_bias_and_min_tokens(row_logits: torch.Tensor, row: SamplingRow) -> None:
    for token_id, bias in row.params.logit_bias.items():
        row_logits[token_id] += bias
    if len(row.output_token_ids) < row.params.min_tokens and row.stop_ids_before_min:
        row_logits[list(row.stop_ids_before_min)] = float("-inf")


def _apply_grammar(row_logits: torch.Tensor, grammar: GrammarMatcher, output_token_ids: Sequence[int]) -> None:
    """-inf for every token the grammar forbids after output_token_ids (ids past the
    tokenizer's vocabulary included: a model's logits may be wider)."""
    bits = torch.from_numpy(grammar.allowed_after(output_token_ids[grammar.num_consumed:]))
    allowed = torch.zeros(row_logits.shape[0], dtype=torch.bool)
    width = min(bits.shape[0], allowed.shape[0])
    allowed[:width] = bits[:width]
    row_logits.masked_fill_(~allowed.to(row_logits.device), float("-inf"))


def _apply_filters(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    top_k = [r.params.top_k for r in rows]
    top_p = [r.params.top_p for r in rows]
    min_p = [r.params.min_p for r in rows]
    sampled = [not r.params.greedy for r in rows]
    if not any(s and (k > 0 or p < 1.0 or m > 0.0) for s, k, p, m in zip(sampled, top_k, top_p, min_p)):
        return logits
    vocab = logits.shape[1]
    device = logits.device
    k = to_device([kk if (s and kk > 0) else vocab for s, kk in zip(sampled, top_k)], torch.int64, device)
    p = to_device([pp if s else 1.0 for s, pp in zip(sampled, top_p)], logits.dtype, device)
    m = to_device([mm if s else 0.0 for s, mm in zip(sampled, min_p)], logits.dtype, device)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device).unsqueeze(0)
    drop = ranks >= k.clamp(max=vocab).unsqueeze(1)  # top-k
    sorted_probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop |= mass_before >= p.unsqueeze(1)  # top-p: keep the smallest prefix reaching p
    drop |= sorted_probs < m.unsqueeze(1) * sorted_probs[:, :1]  # min-p, relative to the top token
    drop[:, 0] = False  # the most likely token always survives
    return logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[SampledToken]:
    """Pick one token per row. logits: [n, vocab] raw fp32 model logits."""
    transformed = transform_logits(logits, rows)
    return PendingTokens(logits, rows, choose(transformed, rows)).result()


def choose(transformed: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """[n] chosen token ids, on the logits' device: greedy rows take the argmax;
    sampled rows draw, batched per generator (all unseeded rows share one), so a
    step costs a few kernels and no host synchronisation."""
    chosen = transformed.argmax(dim=-1)
    by_generator: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        if not row.params.greedy:
            by_generator.setdefault(id(row.generator), []).append(i)
    for indices in by_generator.values():
        index = to_device(indices, torch.int64, transformed.device)
        probs = transformed[index].softmax(dim=-1)  # [len(indices), vocab]
        chosen[index] = draw_rows(probs, rows[indices[0]].generator)
    return chosen


def draw_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of `probs` [n, vocab]. Exponential race: argmax(p / E)
    with E ~ Exp(1) picks index i with probability p_i."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


class PendingTokens:
    """Chosen ids, with their logprobs (from the raw logits) where a row asks,
    queued for the host: computed and copied at once, read by `result`."""

    def __init__(self, logits: torch.Tensor | None, rows: Sequence[SamplingRow], token_ids: torch.Tensor):
        """`logits` may be None where no row asks for logprobs."""
        self.rows = list(rows)
        self.token_ids = token_ids  # [n] on the device
        counts = [row.params.logprobs for row in self.rows]
        tensors = [token_ids]
        if any(count is not None for count in counts):
            assert logits is not None, "a row asks for logprobs"
            logprobs = logits.log_softmax(dim=-1)  # [n, vocab]
            tensors.append(logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1))  # [n]
            most = max(count or 0 for count in counts)
            if most:
                tensors.extend(logprobs.topk(most))  # values, ids: [n, most], descending
        self._copy = HostCopy(tensors)

    def result(self) -> list[SampledToken]:
        host = self._copy.wait()
        token_ids = host[0].tolist()
        if len(host) == 1:
            return [SampledToken(token_id, None, None) for token_id in token_ids]
        chosen = host[1].tolist()
        top_values, top_ids = (host[2].tolist(), host[3].tolist()) if len(host) == 4 else ([], [])
        results = []
        for i, (row, token_id) in enumerate(zip(self.rows, token_ids)):
            count = row.params.logprobs
            if count is None:
                results.append(SampledToken(token_id, None, None))
                continue
            top = dict(zip(top_ids[i][:count], top_values[i][:count])) if count else {}
            results.append(SampledToken(token_id, chosen[i], top))
        return results


def top_logprobs(row_logprobs: torch.Tensor, count: int) -> dict[int, float]:
    if count == 0:
        return {}
    values, ids = row_logprobs.topk(count)
    return {int(t): float(v) for t, v in zip(ids.tolist(), values.tolist())}
