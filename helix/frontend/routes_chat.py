"""POST /v1/chat/completions: messages -> chat template -> one engine request with n choices."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

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
    tokenize_chat,
)
from helix.frontend.logprobs import chat_logprobs
from helix.frontend.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatStreamChoice,
    FunctionCallDelta,
    ToolCallDelta,
    Usage,
)
from helix.frontend.tool_calls import Answer, ForcedToolCall, ToolCallPlan, plan_tool_calls, template_tools
from helix.frontend.routing import Endpoint, json_response, read_body
from helix.frontend.sampling import chat_params, constraint_field
from helix.frontend.state import ServerState, state_of
from helix.frontend.streaming import stream_generation
from helix.outputs import RequestOutput
from helix.scheduler.request import TokenLogprobs


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    with state.admit():
        body = await read_body(request, ChatCompletionRequest)
        state.check_model(body.model)
        try:
            tool_calls = plan_tool_calls(body.tools, body.tool_choice, state.config.tool_call_parser)
            params = chat_params(body, tool_calls)
            forced = tool_calls is not None and tool_calls.structured_outputs is not None
            await check_structured_outputs(state, params, "tools" if forced else constraint_field(body))
            tools = template_tools(body.tools) if tool_calls is not None else None
            prompt = PreparedPrompt(await tokenize_chat(state, body.messages, tools=tools), None)
            generation = prepare(state, new_request_id("chatcmpl"), [prompt], params, body.priority,
                                 body.cache_salt)
        except ValueError as error:
            raise from_value_error(error) from None
        view = _View(state, body, generation, int(time.time()), tool_calls)
        if body.stream:
            return await stream_generation(request, state, generation, _Chunks(view))
        return json_response(view.response((await final_outputs(state, generation))[0]))


@dataclass
class _View:
    state: ServerState
    body: ChatCompletionRequest
    generation: Generation
    created: int
    tool_calls: ToolCallPlan | None  # how the output becomes tool calls, if it may

    def logprobs(self, entries: Sequence[TokenLogprobs]) -> ChatLogprobs | None:
        if not self.body.logprobs:
            return None
        return chat_logprobs(self.state.token_text, entries)

    def usage(self, completion_tokens: int) -> Usage:
        prompt_tokens = self.generation.num_prompt_tokens
        return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)

    def response(self, output: RequestOutput) -> ChatCompletionResponse:
        choices = []
        for completion in output.outputs:
            answer = self.answer_of(completion.text, completion.finish_reason)
            message = (AssistantMessage(content=answer.content, tool_calls=answer.calls) if answer.calls
                       else AssistantMessage(content=completion.text))
            choices.append(ChatChoice(completion.index, message, self.logprobs(completion.logprobs or []),
                                      "tool_calls" if answer.calls else completion.finish_reason))
        return ChatCompletionResponse(id=self.generation.request_id, created=self.created,
                                      model=self.state.config.served_model_name, choices=choices,
                                      usage=self.usage(sum(len(c.token_ids) for c in output.outputs)))

    def answer_of(self, text: str, finish_reason: str | None) -> Answer:
        """The text and tool calls of a finished output (no calls where max_tokens cut it)."""
        if self.tool_calls is None or finish_reason != "stop":
            return Answer(text, [])
        return self.tool_calls.answer(text)

    def chunk(self, choices: list[ChatStreamChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.generation.request_id, created=self.created,
                                   model=self.state.config.served_model_name, choices=choices, usage=usage)


class _Chunks:
    """The role first (one chunk per choice), then content deltas, the last with its finish_reason.
    Tool calls are sent whole, in the choice's last chunk."""

    def __init__(self, view: _View):
        self.view = view
        self.tokens_sent = [0] * view.generation.params.n
        self.finish_sent = [False] * view.generation.params.n
        self.unsent_logprobs: list[list[TokenLogprobs]] = [[] for _ in range(view.generation.params.n)]
        self.held_text = [""] * view.generation.params.n  # with tool calls: the output so far
        self.chars_sent = [0] * view.generation.params.n  # of which streamed as content

    def opening(self) -> list[msgspec.Struct]:
        delta = ChatDelta(role="assistant", content=None if isinstance(self.view.tool_calls, ForcedToolCall) else "")
        return [self.view.chunk([ChatStreamChoice(i, delta)]) for i in range(self.view.generation.params.n)]

    def on_output(self, prompt_index: int, output: RequestOutput) -> list[msgspec.Struct]:
        if self.view.tool_calls is not None:
            return self._on_call_output(self.view.tool_calls, output)
        chunks: list[msgspec.Struct] = []
        for completion in output.outputs:
            i = completion.index
            if completion.logprobs:
                self.unsent_logprobs[i] += completion.logprobs
            # Tokens without text yet (a partial character, a held-back stop-string prefix)
            # wait for the next chunk; their logprobs travel with it.
            if not (completion.text or (completion.finished and not self.finish_sent[i])):
                continue
            self.tokens_sent[i] = completion.num_generated_tokens
            self.finish_sent[i] = completion.finished
            chunks.append(self._content_chunk(i, completion.text, completion.finish_reason))
        return chunks

    def _on_call_output(self, plan: ToolCallPlan, output: RequestOutput) -> list[msgspec.Struct]:
        """Content streams as far as the plan releases it (not into a possible call);
        the calls go whole in the choice's last chunk, with what content is left."""
        chunks: list[msgspec.Struct] = []
        for completion in output.outputs:
            i = completion.index
            self.unsent_logprobs[i] += completion.logprobs or []
            self.held_text[i] += completion.text
            self.tokens_sent[i] = completion.num_generated_tokens
            if self.finish_sent[i]:
                continue
            text = self.held_text[i]
            if not completion.finished:
                release = plan.releasable(text)
                if release > self.chars_sent[i]:
                    chunks.append(self._content_chunk(i, text[self.chars_sent[i]:release], None))
                    self.chars_sent[i] = release
                continue
            self.finish_sent[i] = True
            answer = self.view.answer_of(text, completion.finish_reason)
            if not answer.calls:
                chunks.append(self._content_chunk(i, text[self.chars_sent[i]:], completion.finish_reason))
                continue
            rest = text[self.chars_sent[i]:max(self.chars_sent[i], plan.releasable(text))]
            calls = [ToolCallDelta(index=n, id=call.id, type="function",
                                   function=FunctionCallDelta(call.function.name, call.function.arguments))
                     for n, call in enumerate(answer.calls)]
            delta = ChatDelta(content=rest or None, tool_calls=calls)
            logprobs = self.view.logprobs(self.unsent_logprobs[i])
            chunks.append(self.view.chunk([ChatStreamChoice(i, delta, logprobs, "tool_calls")]))
        return chunks

    def _content_chunk(self, i: int, content: str, finish_reason: str | None) -> ChatCompletionChunk:
        logprobs = self.view.logprobs(self.unsent_logprobs[i])
        self.unsent_logprobs[i] = []
        return self.view.chunk([ChatStreamChoice(i, ChatDelta(content=content or None), logprobs, finish_reason)])

    def closing(self) -> list[msgspec.Struct]:
        options = self.view.body.stream_options
        if options is None or not options.include_usage:
            return []
        return [self.view.chunk([], self.view.usage(sum(self.tokens_sent)))]


ENDPOINTS = [
    Endpoint("POST", "/v1/chat/completions", create_chat_completion,
             "Create chat completions (OpenAI-compatible).", ChatCompletionRequest, ChatCompletionResponse,
             streams=True),
]
