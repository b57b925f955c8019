"""How a chat answer becomes tool calls: forced by structured output, or parsed.

- Forced (tool_choice naming a function, or "required"): the output is
  structured output (`helix.structured_output`): a named function's
  arguments, a JSON object valid against its parameters, or
  {"name": ..., "arguments": {...}} for one of the tools (one call;
  parallel calls are not made).
- Parsed (tool_choice "auto", OpenAI's default when tools are given): the
  model writes text and calls in its own syntax, which only a parser for
  that syntax can tell apart. `helix serve --tool-call-parser hermes` reads
  Hermes-style calls (Qwen2.5, Qwen3, Hermes): `<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>` blocks after any text; `llama3_json` reads
  Llama 3.1+'s: an answer made of `{"name": ..., "parameters": {...}}`
  objects. Without a parser, "auto" is refused.

Either way the answer's message holds the calls in `tool_calls` (and the
text before them, if any, as content), with finish_reason "tool_calls"; an
output with no complete call stays text.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from helix.frontend.protocol import FunctionCall, NamedToolChoice, ToolCall, ToolChoice, ToolDefinition
from helix.structured_output import StructuredOutputs

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_HERMES_BLOCK = re.compile(re.escape(_HERMES_OPEN) + r"(.*?)(?:" + re.escape(_HERMES_CLOSE) + r"|\Z)", re.DOTALL)


@dataclass(frozen=True)
class Answer:
    content: str | None
    calls: list[ToolCall]


@dataclass(frozen=True)
class ForcedToolCall:
    """The whole output is one call, written under `structured_outputs`."""

    structured_outputs: StructuredOutputs
    forced_name: str | None  # a named function: the output is its arguments

    def answer(self, text: str) -> Answer:
        """The call a complete output holds; text where it is not one (cut short)."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return Answer(text, [])
        if self.forced_name is not None:
            return Answer(None, [_call(self.forced_name, text)])
        return Answer(None, [_call(document["name"], json.dumps(document["arguments"]))])

    def releasable(self, text: str) -> int:
        """How much of the output so far may stream as content: none, it is the call."""
        return 0


@dataclass(frozen=True)
class HermesToolCalls:
    """Text, then `<tool_call>{...}</tool_call>` blocks; nothing constrains the output."""

    structured_outputs: StructuredOutputs | None = None

    def answer(self, text: str) -> Answer:
        start = text.find(_HERMES_OPEN)
        if start < 0:
            return Answer(text, [])
        calls = []
        for block in _HERMES_BLOCK.findall(text, start):
            try:
                document = json.loads(block)
                calls.append(_call(str(document["name"]), json.dumps(document.get("arguments", {}))))
            except (json.JSONDecodeError, KeyError, TypeError):
                return Answer(text, [])  # not calls after all: the text as written
        content = text[:start].strip()
        return Answer(content or None, calls)

    def releasable(self, text: str) -> int:
        """The content before any call; a tail that may be the start of `<tool_call>` waits."""
        start = text.find(_HERMES_OPEN)
        if start >= 0:
            return start
        for keep in range(min(len(_HERMES_OPEN) - 1, len(text)), 0, -1):
            if _HERMES_OPEN.startswith(text[-keep:]):
                return len(text) - keep
        return len(text)


@dataclass(frozen=True)
class Llama3JsonToolCalls:
    """Llama 3.1+ with tools in its template: the whole answer is either text or calls,
    `{"name": ..., "parameters": {...}}` objects separated by ";" (an answer that
    starts with "{" is held until it ends, since it may be calls)."""

    structured_outputs: StructuredOutputs | None = None

    def answer(self, text: str) -> Answer:
        if not text.lstrip().startswith("{"):
            return Answer(text, [])
        calls = []
        decoder = json.JSONDecoder()
        rest = text.strip()
        while rest:
            try:
                document, end = decoder.raw_decode(rest)
                arguments = document["parameters"] if "parameters" in document else document.get("arguments", {})
                calls.append(_call(str(document["name"]), json.dumps(arguments)))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                return Answer(text, [])
            rest = rest[end:].lstrip()
            if rest.startswith(";"):
                rest = rest[1:].lstrip()
            elif rest:
                return Answer(text, [])
        return Answer(None, calls)

    def releasable(self, text: str) -> int:
        stripped = text.lstrip()
        return 0 if not stripped or stripped.startswith("{") else len(text)


ToolCallPlan = ForcedToolCall | HermesToolCalls | Llama3JsonToolCalls
_PARSERS = {"hermes": HermesToolCalls, "llama3_json": Llama3JsonToolCalls}
TOOL_CALL_PARSERS = tuple(_PARSERS)  # --tool-call-parser's choices


def _call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name, arguments))


def plan_tool_calls(tools: list[ToolDefinition] | None, tool_choice: ToolChoice | None,
                    parser: str | None = None) -> ToolCallPlan | None:
    """How the answer becomes tool calls, or None for plain text. `parser`: the
    server's tool-call parser. Raises ValueError naming the field for a choice
    Helix cannot honour."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise ValueError("tool_choice: there are no tools to choose from")
        return None
    if tool_choice == "none":
        return None
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError("tools: function names must be unique")
    if tool_choice in (None, "auto"):
        if parser is None:
            raise ValueError('tool_choice: "auto" (the default when tools are given) needs a server started with '
                             '--tool-call-parser (hermes for Qwen and Hermes models, llama3_json for Llama 3.1+); '
                             'send "required", a named function, or "none"')
        return _PARSERS[parser]()
    if isinstance(tool_choice, NamedToolChoice):
        by_name = {tool.function.name: tool for tool in tools}
        chosen = by_name.get(tool_choice.function.name)
        if chosen is None:
            raise ValueError(f"tool_choice: no tool is named {tool_choice.function.name!r}")
        return ForcedToolCall(_json(chosen.function.parameters or _ANY_OBJECT), chosen.function.name)
    one_of = [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                                "arguments": tool.function.parameters or _ANY_OBJECT},
               "required": ["name", "arguments"], "additionalProperties": False} for tool in tools]
    return ForcedToolCall(_json({"anyOf": one_of}), None)


def _json(schema: dict[str, Any]) -> StructuredOutputs:
    try:
        return StructuredOutputs(json=schema)
    except ValueError as error:
        raise ValueError(f"tools: {error}") from None


def template_tools(tools: list[ToolDefinition] | None) -> list[dict[str, Any]] | None:
    """The tools as chat templates take them (OpenAI's shape, as plain data)."""
    if not tools:
        return None
    return [{"type": "function", "function": {key: value for key, value in
                                              (("name", t.function.name), ("description", t.function.description),
                                               ("parameters", t.function.parameters)) if value is not None}}
            for t in tools]
