"""Turning chat messages into prompt tokens.

Precedence: a `--chat-template` file, else the tokenizer's own template, else
DEFAULT_CHAT_TEMPLATE. Templates are Jinja, rendered by transformers'
sandboxed `apply_chat_template`.

Special tokens: model and file templates write their own (BOS, turn markers),
so their text is encoded without adding any; the default template is plain
text, encoded like a /v1/completions prompt (with the tokenizer's usual BOS).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import msgspec

from helix.frontend.protocol import ChatMessage

# Role-tagged text ending with an open assistant turn, e.g.
#   <|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # Jinja text
    add_special_tokens: bool

    @classmethod
    def resolve(cls, tokenizer: Any, override_file: str | None = None) -> ChatTemplate:
        """Raises OSError for an unreadable file, ValueError for one that is not valid Jinja."""
        if override_file is not None:
            return cls.from_text(Path(override_file).read_text(encoding="utf-8"))
        if own := _tokenizer_template(tokenizer):
            return cls.from_text(own)
        return cls.from_text(DEFAULT_CHAT_TEMPLATE, add_special_tokens=True)

    @classmethod
    def from_text(cls, source: str, add_special_tokens: bool = False) -> ChatTemplate:
        """Jinja text; raises ValueError where it is not valid Jinja."""
        try:
            jinja2.Environment().parse(source)
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(f"chat template: invalid Jinja at line {error.lineno}: {error.message}") from error
        return cls(source, add_special_tokens)

    def render(self, tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None) -> str:
        """Raises ValueError for messages the template refuses (it may `raise_exception`).
        `tools` (OpenAI's shape) go to templates that describe tools to the model."""
        if tokenizer is None:
            raise ValueError("messages: this model has no tokenizer, so chat is not available")
        conversation = [_template_message(m) for m in messages]
        try:
            text = tokenizer.apply_chat_template(conversation, chat_template=self.source, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt, tools=tools)
        except jinja2.TemplateError as error:
            raise ValueError(f"messages: the chat template rejected them: {error}") from error
        return str(text)

    def tokenize(self, tokenizer: Any, messages: list[ChatMessage], add_generation_prompt: bool = True,
                 tools: list[dict[str, Any]] | None = None) -> list[int]:
        return self.encode(tokenizer, self.render(tokenizer, messages, add_generation_prompt, tools))

    def encode(self, tokenizer: Any, text: str) -> list[int]:
        """Token ids of text this template rendered."""
        return list(tokenizer.encode(text, add_special_tokens=self.add_special_tokens))


def _tokenizer_template(tokenizer: Any) -> str | None:
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # named templates: use the default one
        own = own.get("default")
    return own if isinstance(own, str) and own else None


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as transformers' chat templates take it: tool calls with their
    arguments parsed (templates write them out as JSON), the id a tool answers."""
    entry: dict[str, Any] = {"role": template_role(message.role), "content": message_text(message)}
    if message.tool_calls:
        entry["tool_calls"] = [{"id": call.id, "type": "function",
                                "function": {"name": call.function.name,
                                             "arguments": _parsed(call.function.arguments)}}
                               for call in message.tool_calls]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def template_role(role: str) -> str:
    """The role a chat template sees: models' templates know "system", not OpenAI's "developer"."""
    return "system" if role == "developer" else role


def parse_messages(conversation: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
    """OpenAI-style message dicts -> ChatMessages; raises ValueError naming the bad field."""
    if not conversation:
        raise ValueError("messages: a conversation must hold at least one message")
    try:
        return msgspec.convert(list(conversation), list[ChatMessage])
    except msgspec.ValidationError as error:
        raise ValueError(f"messages: {error}") from None


def message_text(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text for part in message.content)
