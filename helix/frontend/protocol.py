"""Request and response bodies of the OpenAI-compatible API, as msgspec Structs.

Decoding a body with these types is the first validation step: wrong types,
out-of-range numbers and non-finite floats are rejected by msgspec before any
handler logic runs. Unknown fields are ignored, as OpenAI clients send extras.
The limits below are part of the types, so /openapi.json documents them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from helix.sampling_params import MAX_LOGPROBS

MAX_N = 16  # completions per prompt
MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_STOP_STRINGS = 16
MAX_ABS_LOGIT_BIAS = 100.0  # OpenAI's range; larger values overflow fp32 logits

# Integers outside int64 would overflow tensors inside the engine's step.
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
# seed + index (index < MAX_N) seeds each of the n completions and must stay in uint64.
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
N = Annotated[int, Meta(ge=1, le=MAX_N)]
LogprobCount = Annotated[int, Meta(ge=0, le=MAX_LOGPROBS)]
StopStrings = Annotated[list[str], Meta(max_length=MAX_STOP_STRINGS)]
LogitBias = dict[str, Annotated[float, Meta(ge=-MAX_ABS_LOGIT_BIAS, le=MAX_ABS_LOGIT_BIAS)]]
# A prompt: text, token ids, or a batch of texts / token-id lists (homogeneity is checked later).
Prompt = str | list[str | Int64 | list[Int64]]


# -- requests ---------------------------------------------------------------------
class StreamOptions(Struct):
    include_usage: bool = False


class TextPart(Struct):
    type: Literal["text"]
    text: str


class FunctionCall(Struct):
    name: str
    arguments: str  # JSON text


class ToolCall(Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Struct, kw_only=True):
    """"developer" is OpenAI's newer name for "system"; templates see "system".
    An assistant message may carry the tool calls it made; a "tool" message
    answers one of them (tool_call_id)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; None: any object
    strict: bool | None = None  # forced calls always follow the schema, strict or not


class ToolDefinition(Struct, kw_only=True):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Struct):
    name: str


class NamedToolChoice(Struct, kw_only=True):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(Struct, kw_only=True):
    name: str
    schema: dict[str, Any] | None = None  # None: any JSON object
    description: str | None = None
    strict: bool | None = None  # the output always follows the schema, strict or not


class ResponseFormat(Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None  # with type "json_schema"


class StructuredOutputsField(Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's `structured_outputs` body field: exactly one constraint. Unknown
    kinds (grammar, structural_tag) are refused rather than ignored."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None


class SamplingFields(Struct, kw_only=True):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: Int64 = 0
    min_p: float = 0.0
    n: N = 1
    stop: str | StopStrings | None = None
    stop_token_ids: list[Int64] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Seed | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: LogitBias | None = None
    ignore_eos: bool = False
    min_tokens: Int64 = 0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    user: str | None = None
    priority: Int64 = 0
    cache_salt: str | None = None
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: Prompt
    max_tokens: Int64 | None = 16
    echo: bool = False
    logprobs: LogprobCount | None = None
    best_of: Int64 | None = None
    suffix: str | None = None  # insertion: not supported, refused when non-empty


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: Int64 | None = None
    max_completion_tokens: Int64 | None = None  # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: LogprobCount | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None  # None: "auto" with tools, as OpenAI defines it


class TokenizeRequest(Struct, kw_only=True):
    """Exactly one of `prompt` and `messages`."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    tokens: list[Int64]


# -- responses --------------------------------------------------------------------
class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(Struct):
    """OpenAI's legacy format: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(Struct, kw_only=True):
    """Also each streamed chunk (then `usage` is null except in the final usage chunk)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Struct):
    content: list[TokenLogprob] | None


class AssistantMessage(Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET  # left out of the JSON when there are none


class ChatChoice(Struct):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Struct, kw_only=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatStreamChoice(Struct):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


class ModelCard(Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "helix"
    max_model_len: int


class ModelList(Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


class TokenizeResponse(Struct):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(Struct):
    prompt: str


class VersionResponse(Struct):
    version: str


class HealthResponse(Struct):
    status: str


class ErrorBody(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Struct):
    error: ErrorBody


def encode(value: Struct) -> bytes:
    return msgspec.json.encode(value)
