"""Structured output: JSON-schema-constrained generation on the embedded helix-tiny pair,
with and without speculation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from helix import LLM, SamplingParams, StructuredOutputs
from helix.engine_args import embedded_model_path
from helix.structured_output import GrammarCompiler

# Every value is bounded (booleans, enums, small integers), so even a model trained on
# Shakespeare completes the document well within max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {"speaker": {"enum": ["ROMEO", "JULIET", "NURSE"]}, "sad": {"type": "boolean"},
                   "act": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["speaker", "sad", "act"],
    "additionalProperties": False,
}
PROMPTS = ["ROMEO:", "Who speaks next? Answer in JSON.", "JULIET:\nO Romeo, Romeo"]


def constrained(**options: object) -> SamplingParams:
    return SamplingParams(max_tokens=64, structured_outputs=StructuredOutputs(json=SCHEMA), **options)


def assert_matches_schema(text: str) -> None:
    document = json.loads(text)
    assert list(document) == ["speaker", "sad", "act"]  # the schema's order
    assert document["speaker"] in ("ROMEO", "JULIET", "NURSE")
    assert isinstance(document["sad"], bool)
    assert isinstance(document["act"], int) and 1 <= document["act"] <= 5


@pytest.fixture(scope="module")
def speculative() -> LLM:
    """The embedded pair, drafting K = 4 every step."""
    return LLM(speculation_mode="fixed", num_speculative_tokens=4, num_kv_blocks=256, check_invariants=True)


@pytest.fixture(scope="module")
def plain() -> LLM:
    return LLM(embedded_model_path("target"), num_kv_blocks=256, check_invariants=True)


def test_greedy_output_is_a_valid_document(plain: LLM) -> None:
    for output in plain.generate(PROMPTS, constrained(temperature=0.0), use_tqdm=False):
        (completion,) = output.outputs
        assert completion.finish_reason == "stop"  # the document is complete: no EOS needed
        assert_matches_schema(completion.text)
        assert plain.tokenizer.decode(completion.token_ids) == completion.text


def test_speculation_keeps_the_greedy_output(plain: LLM, speculative: LLM) -> None:
    drafted_before = speculative.stats()["spec_draft_tokens"]
    expected = [o.outputs[0].token_ids for o in plain.generate(PROMPTS, constrained(temperature=0.0),
                                                               use_tqdm=False)]
    outputs = speculative.generate(PROMPTS, constrained(temperature=0.0), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert speculative.stats()["spec_draft_tokens"] > drafted_before  # the drafts ran, under the mask too


@pytest.mark.parametrize("engine", ["plain", "speculative"])
def test_sampled_outputs_are_valid_documents(engine: str, request: pytest.FixtureRequest) -> None:
    llm: LLM = request.getfixturevalue(engine)
    params = constrained(temperature=1.0, n=4, seed=11)
    for output in llm.generate(PROMPTS, params, use_tqdm=False):
        for completion in output.outputs:
            assert completion.finish_reason == "stop"
            assert_matches_schema(completion.text)


def test_any_json_object(plain: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=24, structured_outputs=StructuredOutputs(json_object=True))
    (output,) = plain.generate(["ROMEO:"], params, use_tqdm=False)
    text = output.outputs[0].text
    assert text.startswith("{")
    if output.outputs[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: what there is is still a prefix the grammar allows
        assert output.outputs[0].finish_reason == "length" and len(output.outputs[0].token_ids) == 24


@pytest.mark.parametrize("engine", ["plain", "speculative"])
def test_choice_and_regex(engine: str, request: pytest.FixtureRequest) -> None:
    llm: LLM = request.getfixturevalue(engine)
    choices = ("ROMEO", "JULIET", "the NURSE", 'a "quoted" \\ choice')
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    for spec, check in ((StructuredOutputs(choice=choices), lambda text: text in choices),
                        (StructuredOutputs(regex=pattern), lambda text: re.fullmatch(pattern, text))):
        for temperature in (0.0, 1.0):
            params = SamplingParams(temperature=temperature, n=3, seed=2, max_tokens=32, structured_outputs=spec)
            for output in llm.generate(PROMPTS, params, use_tqdm=False):
                for completion in output.outputs:
                    assert check(completion.text), (spec, completion.text)
                    assert completion.finish_reason == "stop"


def test_mixed_batch_leaves_unconstrained_requests_alone(plain: LLM) -> None:
    free = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = plain.generate(["ROMEO:"], free, use_tqdm=False)[0].outputs[0].token_ids
    mixed = plain.generate(["ROMEO:", "ROMEO:"], [free, constrained(temperature=0.0)], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone
    assert_matches_schema(mixed[1].outputs[0].text)


@pytest.mark.parametrize("regime", [{"swap_space": 1.0}, {"swap_space": 0}])
def test_preemption_keeps_the_grammar_in_step(plain: LLM, regime: dict) -> None:
    """Requests swapped out or recomputed mid-document resume where their grammar is:
    the same documents as with ample blocks."""
    prompts = [f"{speaker}:\n" + "O, " * n for n in range(1, 9) for speaker in ("ROMEO", "JULIET")]
    params = constrained(temperature=0.0)
    expected = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    tight = LLM(embedded_model_path("target"), num_kv_blocks=24, block_size=4, max_num_batched_tokens=64,
                check_invariants=True, **regime)
    outputs = tight.generate(prompts, params, use_tqdm=False)
    assert tight.stats()["preemptions"] > 0
    assert [o.outputs[0].token_ids for o in outputs] == expected
    for output in outputs:
        assert_matches_schema(output.outputs[0].text)


def test_mask_after_a_continuation_leaves_the_matcher_as_it_was() -> None:
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path("target"))
    compiler = GrammarCompiler(tokenizer)
    matcher = compiler.matcher(StructuredOutputs(json=SCHEMA))
    prefix = tokenizer.encode('{"speaker":"NURSE","sad":', add_special_tokens=False)
    first = matcher.allowed_after([])
    after_prefix = matcher.allowed_after(prefix)
    assert np.array_equal(matcher.allowed_after([]), first)  # rolled back
    assert first[tokenizer.convert_tokens_to_ids("{")] and not first[tokenizer.convert_tokens_to_ids("[")]
    for token in prefix:
        matcher.consume(token)
    assert matcher.num_consumed == len(prefix)
    assert np.array_equal(matcher.allowed_after([]), after_prefix)
    allowed_text = {tokenizer.decode([t]) for t in np.flatnonzero(after_prefix)}
    assert allowed_text and all("true".startswith(t) or "false".startswith(t) for t in allowed_text)
    forbidden = tokenizer.encode("7", add_special_tokens=False)
    assert not matcher.allowed_after(forbidden).any()  # nothing may follow a forbidden token


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({}, "exactly one"),
    ({"json": SCHEMA, "json_object": True}, "exactly one"),
    ({"json": "{not json"}, "structured_outputs.json: not valid JSON"),
    ({"json": "[1, 2]"}, "must be an object"),
    ({"regex": "a+", "choice": ["a"]}, "exactly one of json, json_object, regex and choice, got regex, choice"),
    ({"choice": []}, "structured_outputs.choice"),
    ({"choice": "yes"}, "structured_outputs.choice"),
    ({"choice": ["yes", ""]}, "structured_outputs.choice"),
])
def test_bad_specs_name_the_field(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        StructuredOutputs(**kwargs)


@pytest.mark.parametrize("spec", [StructuredOutputs(json={"type": "no-such-type"}), StructuredOutputs(regex="[0-9")])
def test_a_grammar_the_compiler_refuses_is_a_value_error(plain: LLM, spec: StructuredOutputs) -> None:
    with pytest.raises(ValueError, match="structured_outputs: cannot be compiled"):
        plain.generate(["ROMEO:"], SamplingParams(structured_outputs=spec), use_tqdm=False)
    assert not plain.engine.has_unfinished()
