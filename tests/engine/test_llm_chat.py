"""LLM.chat: conversations through the chat template into generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from helix import LLM, SamplingParams
from helix.frontend.chat_template import DEFAULT_CHAT_TEMPLATE

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def llm(tiny_model_dirs: dict[str, Path]) -> LLM:
    return LLM(str(tiny_model_dirs["llama"]), num_kv_blocks=256, block_size=4, check_invariants=True)


def test_chat_generates_from_the_rendered_template(llm: LLM) -> None:
    (output,) = llm.chat(CONVERSATION, GREEDY, use_tqdm=False)
    # The tiny tokenizer has no template of its own, so the default one renders the conversation.
    assert output.prompt == "<|system|>\nBe brief.\n<|user|>\nThe quick brown fox\n<|assistant|>\n"
    (plain,) = llm.generate([output.prompt], GREEDY, use_tqdm=False)
    assert output.prompt_token_ids == plain.prompt_token_ids
    assert output.outputs[0].token_ids == plain.outputs[0].token_ids
    assert "<|assistant|>" in DEFAULT_CHAT_TEMPLATE


def test_a_batch_of_conversations_keeps_its_order(llm: LLM) -> None:
    conversations = [[{"role": "user", "content": f"Tell me about {topic}"}] for topic in ("kings", "the sea", "bread")]
    batch = llm.chat(conversations, GREEDY, use_tqdm=False)
    alone = [llm.chat(c, GREEDY, use_tqdm=False)[0] for c in conversations]
    assert [o.prompt for o in batch] == [o.prompt for o in alone]
    assert [o.outputs[0].token_ids for o in batch] == [o.outputs[0].token_ids for o in alone]
    assert len({o.prompt for o in batch}) == 3


def test_developer_role_renders_as_system(llm: LLM) -> None:
    developer = [{"role": "developer", "content": "Be brief."}, CONVERSATION[1]]
    assert llm.chat(developer, GREEDY, use_tqdm=False)[0].prompt == llm.chat(CONVERSATION, GREEDY,
                                                                            use_tqdm=False)[0].prompt


def test_template_text_and_no_generation_prompt(llm: LLM) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    template += "{% if add_generation_prompt %}[answer]{% endif %}"
    (output,) = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template=template)
    assert output.prompt == "[system] Be brief. [user] The quick brown fox [answer]"
    (open_turn,) = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template=template,
                            add_generation_prompt=False)
    assert open_turn.prompt == "[system] Be brief. [user] The quick brown fox "


def test_tools_reach_the_template(llm: LLM) -> None:
    template = "{% for t in tools or [] %}[tool {{ t.function.name }}] {% endfor %}"
    template += "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    (output,) = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template=template, tools=tools)
    assert output.prompt.startswith("[tool get_weather] [system] Be brief.")
    (without,) = llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template=template)
    assert without.prompt.startswith("[system] Be brief.")


@pytest.mark.parametrize(("messages", "fragment"), [
    ([{"role": "wizard", "content": "hi"}], "role"),
    ([{"content": "hi"}], "role"),
    ([{"role": "user", "content": 5}], "content"),
    ([[]], "at least one message"),
    ([CONVERSATION, [{"role": "wizard", "content": "hi"}]], "role"),  # nothing of the batch is added
])
def test_bad_messages_name_the_field(llm: LLM, messages: list, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"messages: .*{fragment}"):
        llm.chat(messages, GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_invalid_template_is_a_value_error(llm: LLM) -> None:
    with pytest.raises(ValueError, match="chat template: invalid Jinja"):
        llm.chat(CONVERSATION, GREEDY, use_tqdm=False, chat_template="{% for m in messages %}")
