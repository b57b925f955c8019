"""From decoded request bodies to engine inputs: prompt lists and SamplingParams.

Every check raises ValueError("field: message"), which the routes answer with
a 400; SamplingParams adds its own checks the same way.
"""

from __future__ import annotations

from helix.frontend.protocol import (
    MAX_PROMPTS,
    ChatCompletionRequest,
    CompletionRequest,
    Prompt,
    SamplingFields,
)
from helix.frontend.tool_calls import ToolCallPlan
from helix.sampling_params import RequestOutputKind, SamplingParams
from helix.structured_output import StructuredOutputs

EnginePrompt = str | list[int]


def completion_prompts(prompt: Prompt) -> list[EnginePrompt]:
    """A string, token ids, or a batch of either -> one engine prompt per entry."""
    if isinstance(prompt, str):
        prompts: list[EnginePrompt] = [prompt]
    elif not prompt:
        raise ValueError("prompt: must not be empty")
    elif all(isinstance(p, int) for p in prompt):
        prompts = [[int(p) for p in prompt]]  # type: ignore[arg-type]
    elif all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        prompts = list(prompt)  # type: ignore[arg-type]
    else:
        raise ValueError("prompt: must be a string, a list of token ids, or a list of strings or of token-id "
                         "lists, not a mix")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"prompt: at most {MAX_PROMPTS} prompts per request, got {len(prompts)}")
    for index, item in enumerate(prompts):
        if not item:
            raise ValueError(f"prompt: prompt {index} is empty" if len(prompts) > 1 else "prompt: must not be empty")
    return prompts


def completion_params(body: CompletionRequest) -> SamplingParams:
    if body.best_of not in (None, 1):
        raise ValueError(f"best_of: only 1 is supported, got {body.best_of}")
    if body.suffix:
        raise ValueError("suffix: inserting text before a suffix is not supported")
    echo_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    return _params(body, body.max_tokens, body.logprobs, echo_logprobs, _structured_outputs(body))


def chat_params(body: ChatCompletionRequest, tool_calls: ToolCallPlan | None) -> SamplingParams:
    """`tool_calls`: how the answer becomes tool calls (`plan_tool_calls`), if it may."""
    if body.top_logprobs is not None and not body.logprobs:
        raise ValueError("top_logprobs: requires logprobs to be true")
    structured = _structured_outputs(body)
    if tool_calls is not None and tool_calls.structured_outputs is not None:
        if structured is not None:
            raise ValueError(f"tool_choice: a forced tool call cannot also follow {constraint_field(body)}")
        structured = tool_calls.structured_outputs
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return _params(body, max_tokens, (body.top_logprobs or 0) if body.logprobs else None, None, structured)


def constraint_field(body: SamplingFields) -> str:
    """The request field that asked for structured output, to name in errors (a
    forced tool call's is "tools")."""
    return "structured_outputs" if body.structured_outputs is not None else "response_format"


def _structured_outputs(body: SamplingFields) -> StructuredOutputs | None:
    """From `structured_outputs` (vLLM's field) or OpenAI's `response_format`, not both."""
    response_format = body.response_format
    if response_format is not None and response_format.type == "text":
        response_format = None
    if body.structured_outputs is not None:
        if response_format is not None:
            raise ValueError("structured_outputs: give it or a response_format, not both")
        given = body.structured_outputs
        return StructuredOutputs(json=given.json, json_object=given.json_object, regex=given.regex,
                                 choice=given.choice)
    if response_format is None:
        return None
    if response_format.type == "json_object":
        return StructuredOutputs(json_object=True)
    if response_format.json_schema is None:
        raise ValueError('response_format: type "json_schema" needs a json_schema object')
    schema = response_format.json_schema.schema
    try:
        return StructuredOutputs(json=schema) if schema is not None else StructuredOutputs(json_object=True)
    except ValueError as error:
        raise ValueError(f"response_format: {error}") from None


def _params(body: SamplingFields, max_tokens: int | None, logprobs: int | None,
            prompt_logprobs: int | None, structured: StructuredOutputs | None) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        n=body.n, max_tokens=max_tokens, min_tokens=body.min_tokens, temperature=body.temperature,
        top_p=body.top_p, top_k=body.top_k, min_p=body.min_p, presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty, repetition_penalty=body.repetition_penalty,
        logit_bias=_logit_bias(body.logit_bias), seed=body.seed, stop=stop,
        stop_token_ids=tuple(body.stop_token_ids or ()), ignore_eos=body.ignore_eos,
        include_stop_str_in_output=body.include_stop_str_in_output, logprobs=logprobs,
        prompt_logprobs=prompt_logprobs, skip_special_tokens=body.skip_special_tokens,
        structured_outputs=structured, output_kind=RequestOutputKind.DELTA)  # the routes read what each output adds


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    result = {}
    for key, value in (bias or {}).items():
        try:
            result[int(key)] = value
        except ValueError:
            raise ValueError(f"logit_bias: keys must be token ids, got {key!r}") from None
    return result
