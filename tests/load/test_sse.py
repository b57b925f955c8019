"""The incremental SSE parser and how events are read as OpenAI chunks."""

from __future__ import annotations

import json

import pytest

from benchmarks.load.sse import Event, SSEParser, interpret


def feed_all(pieces: list[bytes]) -> list[Event]:
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events + parser.close()


def completion_chunk(text: str, finish: str | None = None) -> bytes:
    body = {"id": "x", "object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


STREAM = (completion_chunk("Hello") + completion_chunk(" w\u00f6rld \u2603") + completion_chunk("!", "length")
          + b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}\n\n'
          + b"data: [DONE]\n\n")


def test_whole_stream_in_one_read() -> None:
    events = feed_all([STREAM])
    assert len(events) == 5 and events[-1].data == "[DONE]"
    assert [interpret(e).text for e in events[:3]] == ["Hello", " w\u00f6rld \u2603", "!"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_split_gives_the_same_events(size: int) -> None:
    """Lines, JSON and multi-byte characters cut at every position."""
    pieces = [STREAM[i:i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(pieces) == feed_all([STREAM])


def test_events_complete_only_at_the_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DO") == []
    assert parser.feed(b"NE]\n") == []
    assert parser.feed(b"\n") == [Event("[DONE]")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_line_endings(newline: bytes) -> None:
    stream = b"data: one" + newline + newline + b"data: two" + newline + newline
    for size in (1, len(stream)):
        assert [e.data for e in feed_all([stream[i:i + size] for i in range(0, len(stream), size)])] == ["one", "two"]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [Event("a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [Event("b")]


def test_comments_fields_and_multiline_data() -> None:
    events = feed_all([b": keep-alive\n\nevent: error\ndata: first\ndata:second\nid: 7\nretry: 10\n\n"])
    assert events == [Event("first\nsecond", "error")]


def test_a_last_event_without_blank_line_is_delivered_at_close() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.close() == [Event("[DONE]")]


def test_done() -> None:
    assert interpret(Event("[DONE]")).done
    assert not interpret(Event(json.dumps({"choices": []}))).done


def test_error_events() -> None:
    message = interpret(Event(json.dumps({"error": {"message": "engine failed", "type": "internal", "code": None}})))
    assert message.error == "engine failed" and not message.done
    assert interpret(Event(json.dumps({"message": "boom"}), "error")).error == "boom"
    assert interpret(Event("not json")).error.startswith("malformed event")
    assert interpret(Event("[1, 2]")).error.startswith("unexpected event")


def test_usage_chunk() -> None:
    message = interpret(Event(json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3,
                                                                   "total_tokens": 7}})))
    assert message.usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert message.text == "" and not message.has_choices and message.error is None
    assert interpret(Event(json.dumps({"choices": [{"text": "a"}], "usage": None}))).usage is None


def test_completion_and_chat_text() -> None:
    assert interpret(Event(json.dumps({"choices": [{"index": 0, "text": "ab", "finish_reason": None}]}))).text == "ab"
    role_only = interpret(Event(json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})))
    assert role_only.text == "" and role_only.has_choices and not role_only.finished
    content = interpret(Event(json.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]})))
    assert content.text == "hi"
    final = interpret(Event(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})))
    assert final.text == "" and final.finished


def test_tokens_without_text_carry_output() -> None:
    """A tokenizer-less model streams empty-text completion chunks; they are output
    (TTFT and gaps are timed on them), unlike a finish-only chunk or a chat role chunk."""
    [empty, finish, role] = feed_all([completion_chunk(""), completion_chunk("", "length"),
                                      b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n'])
    assert interpret(empty).carries_output and not interpret(empty).text
    assert not interpret(finish).carries_output and interpret(finish).finished
    assert not interpret(role).carries_output
    assert interpret(feed_all([completion_chunk("Hi")])[0]).carries_output
