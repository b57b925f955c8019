"""IncrementalDetokenizer with the locally trained byte-level BPE tokenizer."""

from __future__ import annotations

import random

import pytest

from helix.detokenizer import Delta, IncrementalDetokenizer
from helix.sampling_params import SamplingParams
from tests.tiny_models import EOS_TOKEN, build_tokenizer

TEXTS = [
    " The quick brown fox jumps over the lazy dog.",
    " To be, or not to be: é漢字 😀 and more.",
    " Paged attention" + EOS_TOKEN + " stores keys.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def stream(tokenizer, prompt: str, output_ids: list[int], chunk_sizes: list[int] | None = None,
           **params) -> tuple[IncrementalDetokenizer, list[Delta]]:
    """Feed `output_ids` in chunks (one token each by default); the last chunk is marked finished."""
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt), SamplingParams(**params))
    sizes = chunk_sizes or [1] * len(output_ids)
    results, start = [], 0
    for size in sizes:
        chunk = output_ids[start:start + size]
        start += size
        results.append(detokenizer.update(chunk, finished=start >= len(output_ids)))
    return detokenizer, results


def released(results: list[Delta]) -> str:
    return "".join(result.text for result in results)


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_decoded_text(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    detokenizer, results = stream(tokenizer, "The quick", ids)
    expected = tokenizer.decode(ids, skip_special_tokens=True)
    assert released(results) == expected == detokenizer.text
    assert not any(result.stopped for result in results)


@pytest.mark.parametrize("seed", range(4))
def test_chunked_updates_give_the_same_text(tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    ids = tokenizer.encode(" ".join(TEXTS))
    sizes = []
    while sum(sizes) < len(ids):
        sizes.append(rng.randrange(0, 5))  # empty updates too
    _, results = stream(tokenizer, "Hello", ids, sizes)
    assert released(results) == tokenizer.decode(ids, skip_special_tokens=True)


def test_special_tokens_kept_when_not_skipped(tokenizer) -> None:
    ids = tokenizer.encode(TEXTS[2])
    _, results = stream(tokenizer, "The", ids, skip_special_tokens=False)
    assert released(results) == tokenizer.decode(ids, skip_special_tokens=False)
    assert EOS_TOKEN in released(results)


def test_prompt_ending_inside_a_character_is_not_repeated_in_the_output(tokenizer) -> None:
    # The prompt's last token holds the first two bytes of 漢; the output completes it.
    full = tokenizer.encode("The quick a漢 b")
    split = next(i for i in range(1, len(full)) if tokenizer.decode(full[:i]).endswith("a\ufffd"))
    prompt_ids, output_ids = full[:split], full[split:]
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids, SamplingParams())
    text = "".join(detokenizer.update([t], finished=i == len(output_ids) - 1)[0] for i, t in enumerate(output_ids))
    assert text == "漢 b"


# -- stop strings --------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog."


def sentence_ids(tokenizer) -> list[int]:
    ids = tokenizer.encode(SENTENCE)
    # The stop strings below span several tokens.
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[2:6] == [" brow", "n", " fo", "x"]
    return ids


@pytest.mark.parametrize("include, expected", [(False, "The quick "), (True, "The quick brown fox")])
def test_stop_string_across_tokens_is_held_back_then_trimmed(tokenizer, include: bool, expected: str) -> None:
    ids = sentence_ids(tokenizer)
    detokenizer = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["brown fox"],
                                                                       include_stop_str_in_output=include))
    out = ""
    for index, token_id in enumerate(ids[:6]):
        delta, stopped, _ = detokenizer.update([token_id], finished=False)
        out += delta
        assert stopped is (index == 5)  # matched once "x" arrives
        assert "The quick ".startswith(out) or out == expected, f"released {out!r} before the stop was known"
    assert out == expected == detokenizer.text


def test_partial_match_is_released_once_it_cannot_be_a_stop(tokenizer) -> None:
    ids = sentence_ids(tokenizer)
    stop = "brown cat"
    detokenizer = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=[stop]))
    out = ""
    for token_id in ids[:4]:  # "The quick brown": could still become "brown cat"
        out += detokenizer.update([token_id], finished=False)[0]
    assert "brown" not in out
    for token_id in ids[4:]:
        delta, stopped, _ = detokenizer.update([token_id], finished=False)
        out += delta
        assert not stopped
    assert out.startswith("The quick brown fox jumps")
    assert out == SENTENCE[:len(SENTENCE) - (len(stop) - 1)]  # only a possible stop prefix is held
    delta, stopped, _ = detokenizer.update([], finished=True)
    assert out + delta == SENTENCE and not stopped


def test_everything_held_back_is_flushed_when_finished(tokenizer) -> None:
    ids = sentence_ids(tokenizer)
    stop = "never appears here"  # holds back the last 17 characters
    _, results = stream(tokenizer, "", ids, stop=[stop])
    assert released(results[:-1]) == SENTENCE[:-1][:len(SENTENCE) - 1 - (len(stop) - 1)]
    assert released(results) == SENTENCE
    assert not any(result.stopped for result in results)


@pytest.mark.parametrize("include, expected", [(False, "The "), (True, "The qu")])
def test_stop_inside_one_token(tokenizer, include: bool, expected: str) -> None:
    ids = sentence_ids(tokenizer)
    detokenizer, results = stream(tokenizer, "", ids[:2], stop=["qu"], include_stop_str_in_output=include)
    assert [result.stopped for result in results] == [False, True]
    assert released(results) == expected == detokenizer.text


def test_earliest_of_several_stops_wins(tokenizer) -> None:
    ids = sentence_ids(tokenizer)
    detokenizer = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["lazy", "fox", "jumps"]))
    delta, stopped, _ = detokenizer.update(ids, finished=False)
    assert stopped and delta == "The quick brown " and detokenizer.text == "The quick brown "


def test_stop_string_split_across_updates_is_found(tokenizer) -> None:
    ids = sentence_ids(tokenizer)
    detokenizer = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["own fox ju"]))
    out, flags = "", []
    for token_id in ids:
        delta, stopped, _ = detokenizer.update([token_id], finished=False)
        out += delta
        flags.append(stopped)
        if stopped:
            break
    assert out == "The quick br"
    assert flags == [False] * (len(flags) - 1) + [True]
