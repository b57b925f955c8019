"""POST /v1/completions: one engine request per prompt; choice index = prompt_index * n + i."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from helix.frontend.errors import from_value_error
from helix.frontend.generation import (
    Generation,
    PreparedPrompt,
    check_structured_outputs,
    final_outputs,
    new_request_id,
    prepare,
    tokenize_prompts,
)
from helix.frontend.logprobs import completion_logprobs
from helix.frontend.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Usage
from helix.frontend.routing import Endpoint, json_response, read_body
from helix.frontend.sampling import completion_params, completion_prompts, constraint_field
from helix.frontend.state import ServerState, state_of
from helix.frontend.streaming import stream_generation
from helix.outputs import CompletionOutput, RequestOutput
from helix.scheduler.request import TokenLogprobs


async def create_completion(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    with state.admit():
        body = await read_body(request, CompletionRequest)
        state.check_model(body.model)
        try:
            params = completion_params(body)
            await check_structured_outputs(state, params, constraint_field(body))
            prompts = await tokenize_prompts(state, completion_prompts(body.prompt))
            generation = prepare(state, new_request_id("cmpl"), prompts, params, body.priority, body.cache_salt)
        except ValueError as error:
            raise from_value_error(error) from None
        view = _View(state, body, generation, int(time.time()))
        if body.stream:
            return await stream_generation(request, state, generation, _Chunks(view))
        return json_response(view.response(await final_outputs(state, generation)))


@dataclass
class _View:
    state: ServerState
    body: CompletionRequest
    generation: Generation
    created: int

    @property
    def model(self) -> str:
        return self.state.config.served_model_name

    def choice_index(self, prompt_index: int, completion_index: int) -> int:
        return prompt_index * self.generation.params.n + completion_index

    def echo(self, prompt: PreparedPrompt) -> str:
        if not self.body.echo:
            return ""
        if prompt.text is not None:
            return prompt.text
        return self.state.tokenizer.decode(prompt.token_ids) if self.state.tokenizer is not None else ""

    def logprobs(self, prompt: PreparedPrompt, prompt_logprobs: list[TokenLogprobs | None] | None,
                 token_ids: Sequence[int], entries: Sequence[TokenLogprobs], echo: str,
                 offset: int) -> CompletionLogprobs | None:
        """Logprobs of completion tokens `token_ids` (the first at text offset `offset`),
        led by the prompt's when `echo` is the prompt text."""
        if self.body.logprobs is None:
            return None
        text_of = self.state.token_text
        result = CompletionLogprobs([], [], [], [])
        if echo:
            padded = list(prompt_logprobs or [])
            padded += [None] * (len(prompt.token_ids) - len(padded))
            result, _ = completion_logprobs(text_of, prompt.token_ids, padded)
        generated, _ = completion_logprobs(text_of, token_ids, entries, offset)
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(result, name).extend(getattr(generated, name))
        return result

    def response(self, outputs: list[RequestOutput]) -> CompletionResponse:
        choices = []
        for prompt_index, (prompt, output) in enumerate(zip(self.generation.prompts, outputs)):
            echo = self.echo(prompt)
            for completion in output.outputs:
                logprobs = self.logprobs(prompt, output.prompt_logprobs, completion.token_ids,
                                         completion.logprobs or [], echo, len(echo))
                choices.append(CompletionChoice(self.choice_index(prompt_index, completion.index),
                                                echo + completion.text, logprobs, completion.finish_reason))
        generated = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        return self.chunk(choices, self.usage(generated))

    def usage(self, completion_tokens: int) -> Usage:
        prompt_tokens = self.generation.num_prompt_tokens
        return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)

    def chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionResponse:
        return CompletionResponse(id=self.generation.request_id, created=self.created, model=self.model,
                                  choices=choices, usage=usage)


@dataclass
class _ChoiceProgress:
    tokens_sent: int = 0
    text_sent: int = 0  # characters, echo included
    finish_sent: bool = False
    echoed: bool = False
    unsent_token_ids: list[int] = field(default_factory=list)  # with logprobs: generated since the last chunk
    unsent_logprobs: list[TokenLogprobs] = field(default_factory=list)

    def hold(self, completion: CompletionOutput) -> None:
        """Keep the new tokens and their logprobs (when asked for) until a chunk carries them."""
        if completion.logprobs is not None:
            self.unsent_token_ids += completion.token_ids
            self.unsent_logprobs += completion.logprobs

    def sent(self, text: str, completion: CompletionOutput) -> None:
        self.tokens_sent = completion.num_generated_tokens
        self.text_sent += len(text)
        self.finish_sent = completion.finished
        self.echoed = True
        self.unsent_token_ids, self.unsent_logprobs = [], []


class _Chunks:
    """Streamed chunks: each carries one choice's new text (and logprobs); echo leads the first."""

    def __init__(self, view: _View):
        self.view = view
        self.progress: dict[int, _ChoiceProgress] = {}

    def opening(self) -> list[msgspec.Struct]:
        return []

    def on_output(self, prompt_index: int, output: RequestOutput) -> list[msgspec.Struct]:
        chunks: list[msgspec.Struct] = []
        for completion in output.outputs:
            choice = self._choice(prompt_index, output, completion)
            if choice is not None:
                chunks.append(self.view.chunk([choice]))
        return chunks

    def _choice(self, prompt_index: int, output: RequestOutput,
                completion: CompletionOutput) -> CompletionChoice | None:
        index = self.view.choice_index(prompt_index, completion.index)
        progress = self.progress.get(index)
        if progress is None:
            progress = self.progress[index] = _ChoiceProgress()
        progress.hold(completion)
        # Tokens without text yet (a partial character, a held-back stop-string prefix)
        # wait for the next chunk; their logprobs travel with it. A model without a
        # tokenizer has no text at all: each step's tokens get an empty-text chunk.
        new_tokens = self.view.state.tokenizer is None and bool(completion.token_ids)
        if not (completion.text or new_tokens or (completion.finished and not progress.finish_sent)):
            return None
        prompt = self.view.generation.prompts[prompt_index]
        echo = "" if progress.echoed else self.view.echo(prompt)
        logprobs = self.view.logprobs(prompt, output.prompt_logprobs, progress.unsent_token_ids,
                                      progress.unsent_logprobs, echo, progress.text_sent + len(echo))
        text = echo + completion.text
        progress.sent(text, completion)
        return CompletionChoice(index, text, logprobs, completion.finish_reason)

    def closing(self) -> list[msgspec.Struct]:
        options = self.view.body.stream_options
        if options is None or not options.include_usage:
            return []
        generated = sum(p.tokens_sent for p in self.progress.values())
        return [self.view.chunk([], self.view.usage(generated))]


ENDPOINTS = [
    Endpoint("POST", "/v1/completions", create_completion, "Create text completions (OpenAI-compatible).",
             CompletionRequest, CompletionResponse, streams=True),
]
