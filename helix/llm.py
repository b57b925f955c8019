"""LLM: the offline batch API."""

from __future__ import annotations

import itertools
from typing import Any, Sequence

from tqdm.auto import tqdm

from helix.engine_args import EngineArgs
from helix.engine_core import EngineCore, prompt_token_ids
from helix.outputs import RequestOutput
from helix.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    """Generate for many prompts at once with continuous batching.

    Every EngineArgs field is a keyword argument:
    `LLM("path/to/model", max_num_seqs=64, swap_space=0)`.
    """

    def __init__(self, model: str | None = None, **kwargs: Any):
        self.engine = EngineCore(EngineArgs.from_kwargs(model=model, **kwargs), stream_outputs=False)
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True, priority: Sequence[int] | None = None) -> list[RequestOutput]:
        """Prompts are strings or token-id lists; outputs come back in input order."""
        prompt_list = _as_prompt_list(prompts)
        params_list = _as_params_list(sampling_params, len(prompt_list))
        request_ids = []
        for index, (prompt, params) in enumerate(zip(prompt_list, params_list)):
            request_id = f"llm-{next(self._ids)}"
            text = prompt if isinstance(prompt, str) else None
            self.engine.add_request(request_id, prompt_token_ids(self.tokenizer, prompt), params, prompt=text,
                                    priority=priority[index] if priority else 0)
            request_ids.append(request_id)
        return self._run(request_ids, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="generate", disable=not use_tqdm, unit="req") as progress:
            while self.engine.has_unfinished():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        progress.update(1)
        return [finished[request_id] for request_id in request_ids]

    def stats(self) -> dict[str, float | int]:
        return self.engine.stats()


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if prompts and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]  # a single prompt given as token ids
    return list(prompts)


def _as_params_list(params: SamplingParams | Sequence[SamplingParams] | None, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise ValueError(f"sampling_params: got {len(params)} for {count} prompts")
    return list(params)
