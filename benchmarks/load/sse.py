"""Server-sent events parsed incrementally from a byte stream.

`SSEParser.feed` takes bytes exactly as they come off the socket: a line, an
event, or a multi-byte UTF-8 character may be split across reads, and the
parser holds the unfinished tail until the rest arrives. Lines may end in
CRLF, LF or CR; `:` lines are comments; several `data:` lines of one event are
joined with newlines (the SSE specification). `interpret` then reads one
event as OpenAI's streaming framing: a JSON chunk, an error object, or
`[DONE]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    data: str
    event: str = "message"


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._pending_cr = False  # the last read ended in CR: a following LF belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by this chunk, in order."""
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buffer = self._buffer + chunk
        events: list[Event] = []
        start = 0
        while True:
            cr, lf = buffer.find(b"\r", start), buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                end, next_start = cr, cr + 1
                if next_start < len(buffer):
                    if buffer[next_start:next_start + 1] == b"\n":
                        next_start += 1
                else:
                    self._pending_cr = True  # CRLF may be split across reads
            else:
                end, next_start = lf, lf + 1
            self._line(buffer[start:end].decode("utf-8", errors="replace"), events)
            start = next_start
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[Event]:
        """End of stream: an event the server did not close with a blank line is still delivered."""
        events: list[Event] = []
        if self._buffer:
            self._line(self._buffer.decode("utf-8", errors="replace"), events)
            self._buffer = b""
        self._line("", events)
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        if not line:
            if self._data:
                events.append(Event("\n".join(self._data), self._event or "message"))
            self._data, self._event = [], ""
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


@dataclass
class Message:
    """One OpenAI streaming event, interpreted."""

    done: bool = False
    error: str | None = None
    text: str = ""  # generated text this chunk carries (all choices)
    usage: dict[str, Any] | None = None
    has_choices: bool = False
    finished: bool = False  # some choice carries a finish_reason
    # A completions choice with empty text and no finish_reason: tokens without text,
    # as servers stream them for models that have no tokenizer.
    tokens_without_text: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def carries_output(self) -> bool:
        """Whether this chunk brings generated output (text, or tokens without text)."""
        return bool(self.text) or self.tokens_without_text


def interpret(event: Event) -> Message:
    """Read an event as a completions or chat-completions chunk."""
    data = event.data.strip()
    if data == "[DONE]":
        return Message(done=True)
    try:
        body = json.loads(data)
    except ValueError:
        return Message(error=f"malformed event: {data[:200]!r}")
    if not isinstance(body, dict):
        return Message(error=f"unexpected event: {data[:200]!r}")
    if event.event == "error" or "error" in body:
        return Message(error=error_text(body.get("error", body)), raw=body)
    choices = body.get("choices") or []
    text = "".join(_choice_text(choice) for choice in choices if isinstance(choice, dict))
    usage = body.get("usage")
    finished = any(isinstance(choice, dict) and choice.get("finish_reason") is not None for choice in choices)
    tokens_without_text = any(isinstance(choice, dict) and choice.get("text") == "" and "delta" not in choice
                              and choice.get("finish_reason") is None for choice in choices)
    return Message(text=text, usage=usage if isinstance(usage, dict) else None, has_choices=bool(choices),
                   finished=finished, tokens_without_text=tokens_without_text, raw=body)


def error_text(error: Any) -> str:
    """The message of an OpenAI error object (or whatever the server sent)."""
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str):
            return message
        if isinstance(message, (dict, list)):
            return json.dumps(message)
        return json.dumps(error)
    return str(error)


def _choice_text(choice: dict[str, Any]) -> str:
    if "delta" in choice:  # chat
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            return ""
        parts = (delta.get("reasoning_content"), delta.get("content"))
        return "".join(part for part in parts if isinstance(part, str))
    text = choice.get("text")
    return text if isinstance(text, str) else ""
