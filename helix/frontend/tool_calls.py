"""Tool calls the model is made to write: tool_choice "required" or a named function.

Helix parses no model-specific tool-call syntax, so it cannot let a model
choose between text and a call (tool_choice "auto", OpenAI's default when
tools are given); it can make the model call one, as structured output:

- a named function: the output is the call's arguments, a JSON object valid
  against the function's parameters;
- "required": the output is {"name": ..., "arguments": {...}} for one of the
  tools (one call; parallel calls are not made).

The answer's message then holds the call in `tool_calls` and no content, with
finish_reason "tool_calls"; an output cut by max_tokens stays text
("length").
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from helix.frontend.protocol import FunctionCall, NamedToolChoice, ToolCall, ToolChoice, ToolDefinition
from helix.structured_output import StructuredOutputs

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ToolCallPlan:
    structured_outputs: StructuredOutputs
    forced_name: str | None  # a named function: the output is its arguments

    def call(self, text: str) -> ToolCall | None:
        """The call a complete output holds; None where it is not one (cut short)."""
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return None
        if self.forced_name is not None:
            return ToolCall(id=new_call_id(), function=FunctionCall(self.forced_name, text))
        return ToolCall(id=new_call_id(), function=FunctionCall(document["name"], json.dumps(document["arguments"])))


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def plan_tool_calls(tools: list[ToolDefinition] | None, tool_choice: ToolChoice | None) -> ToolCallPlan | None:
    """The structured output that makes the model call a tool, or None for plain text.
    Raises ValueError naming the field for a choice Helix cannot honour."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise ValueError("tool_choice: there are no tools to choose from")
        return None
    if tool_choice == "none":
        return None
    if tool_choice in (None, "auto"):
        raise ValueError('tool_choice: "auto" (the default when tools are given) is not supported, since Helix '
                         'cannot tell a tool call from text in free output; send "required", a named function, '
                         'or "none"')
    names = [tool.function.name for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError("tools: function names must be unique")
    if isinstance(tool_choice, NamedToolChoice):
        by_name = {tool.function.name: tool for tool in tools}
        chosen = by_name.get(tool_choice.function.name)
        if chosen is None:
            raise ValueError(f"tool_choice: no tool is named {tool_choice.function.name!r}")
        return ToolCallPlan(_json(chosen.function.parameters or _ANY_OBJECT), chosen.function.name)
    one_of = [{"type": "object", "properties": {"name": {"const": tool.function.name},
                                                "arguments": tool.function.parameters or _ANY_OBJECT},
               "required": ["name", "arguments"], "additionalProperties": False} for tool in tools]
    return ToolCallPlan(_json({"anyOf": one_of}), None)


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
