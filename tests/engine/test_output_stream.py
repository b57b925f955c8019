"""Outputs a consumer has not read yet merge: the latest snapshot, with every
delta since the last read; DELTA outputs concatenate what each one adds."""

from __future__ import annotations

import pytest

from helix.output_stream import OutputStream
from helix.outputs import CompletionOutput, RequestOutput
from helix.sampling_params import RequestOutputKind
from helix.scheduler.request import TokenLogprobs


def step_output(text: str, tokens: list[int], new_text: str, new_tokens: list[int],
                finish: str | None = None) -> RequestOutput:
    completion = CompletionOutput(0, text, list(tokens), finish, delta_text=new_text, delta_token_ids=list(new_tokens))
    return RequestOutput("r", None, [1], [completion])


async def test_unread_outputs_merge_their_deltas() -> None:
    stream = OutputStream()
    stream.put(step_output("a", [5], "a", [5]))
    first = await stream.get()
    assert (first.outputs[0].delta_text, first.outputs[0].delta_token_ids) == ("a", [5])
    stream.put(step_output("ab", [5, 6], "b", [6]))
    stream.put(step_output("abc", [5, 6, 7, 8], "c", [7, 8]))
    stream.put(step_output("abcd", [5, 6, 7, 8, 9], "d", [9], finish="length"))
    merged = await stream.get()
    completion = merged.outputs[0]
    assert (completion.text, completion.token_ids, completion.finish_reason) == ("abcd", [5, 6, 7, 8, 9], "length")
    assert (completion.delta_text, completion.delta_token_ids) == ("bcd", [6, 7, 8, 9])


def delta_output(text: str, tokens: list[int], num_generated: int, finish: str | None = None) -> RequestOutput:
    entries = [TokenLogprobs(t, -float(t), {t: -float(t)}) for t in tokens]
    completion = CompletionOutput(0, text, list(tokens), finish, entries, text, list(tokens), num_generated,
                                  num_draft_tokens=num_generated)
    return RequestOutput("r", None, [1], [completion], [None, TokenLogprobs(1, -1.0, {})],
                         num_cached_tokens=num_generated, kind=RequestOutputKind.DELTA)


async def test_unread_delta_outputs_concatenate() -> None:
    stream = OutputStream()
    stream.put(delta_output("a", [5], 1))
    assert (await stream.get()).outputs[0].token_ids == [5]
    stream.put(delta_output("b", [6], 2))
    stream.put(delta_output("", [7, 8], 4))  # tokens whose text is still to come
    stream.put(delta_output("cd", [9], 5, finish="length"))
    merged = await stream.get()
    completion = merged.outputs[0]
    assert (completion.text, completion.token_ids) == ("bcd", [6, 7, 8, 9])
    assert (completion.delta_text, completion.delta_token_ids) == ("bcd", [6, 7, 8, 9])
    assert [entry.token_id for entry in completion.logprobs] == [6, 7, 8, 9]
    assert (completion.num_generated_tokens, completion.num_draft_tokens, completion.finish_reason) == (5, 5, "length")
    assert merged.num_cached_tokens == 5 and merged.prompt_logprobs == [None, TokenLogprobs(1, -1.0, {})]


async def test_error_is_raised_to_the_consumer() -> None:
    stream = OutputStream()
    stream.put(step_output("a", [5], "a", [5]))
    stream.fail(RuntimeError("engine died"))
    with pytest.raises(RuntimeError, match="engine died"):
        await stream.get()
