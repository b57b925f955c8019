"""LLM: the offline batch API."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Sequence

from tqdm.auto import tqdm

from helix.engine_args import EngineArgs
from helix.engine_core import EngineCore, prompt_token_ids
from helix.frontend.chat_template import ChatTemplate, parse_messages
from helix.outputs import RequestOutput
from helix.sampling_params import SamplingParams

Prompt = str | list[int]
Conversation = Sequence[Mapping[str, Any]]  # OpenAI-style messages: {"role": ..., "content": ...}


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
        tokenized = [(prompt_token_ids(self.tokenizer, p), p if isinstance(p, str) else None) for p in prompt_list]
        return self._generate(tokenized, sampling_params, use_tqdm, priority)

    def chat(self, messages: Conversation | Sequence[Conversation],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> list[RequestOutput]:
        """Answer one conversation ([{"role": "user", "content": "..."}, ...], roles as in
        /v1/chat/completions) or a list of them; outputs come back in input order, each
        `prompt` the rendered template. The template is `chat_template` (Jinja text), else
        the tokenizer's own, else Helix's default; `tools` (OpenAI's shape) go to templates
        that describe tools to the model."""
        conversations = [messages] if messages and isinstance(messages[0], Mapping) else list(messages)
        template = (ChatTemplate.from_text(chat_template) if chat_template is not None
                    else ChatTemplate.resolve(self.tokenizer))
        rendered = [template.render(self.tokenizer, parse_messages(c), add_generation_prompt, tools)
                    for c in conversations]  # type: ignore[arg-type]
        return self._generate([(template.encode(self.tokenizer, text), text) for text in rendered],
                              sampling_params, use_tqdm)

    def _generate(self, prompts: list[tuple[list[int], str | None]],
                  sampling_params: SamplingParams | Sequence[SamplingParams] | None, use_tqdm: bool,
                  priority: Sequence[int] | None = None) -> list[RequestOutput]:
        """prompts: (token ids, text or None) each."""
        params_list = _as_params_list(sampling_params, len(prompts))
        request_ids = []
        for index, ((token_ids, text), params) in enumerate(zip(prompts, params_list)):
            request_id = f"llm-{next(self._ids)}"
            self.engine.add_request(request_id, token_ids, params, prompt=text,
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
