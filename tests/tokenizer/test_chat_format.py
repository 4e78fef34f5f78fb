"""The chat format: role-token ids on GPT-2's tokenizer, exact rendering and loss masks, message checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.tokenizer.chat_format import (
    CHAT_SPECIAL_TOKENS,
    add_chat_tokens,
    message_problem,
    render_conversation,
    render_prompt,
    reply_stop_ids,
    require_chat_tokens,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <|assistant|>"},
    {"role": "assistant", "content": "Hello there."},
]


@pytest.fixture(scope="module")
def chat_tokenizer(gpt2_tokenizer):
    return add_chat_tokens(gpt2_tokenizer)


def test_gpt2_gains_the_gpt25_chat_models_role_ids(gpt2_tokenizer, chat_tokenizer) -> None:
    assert [chat_tokenizer.token_id(token) for token in CHAT_SPECIAL_TOKENS] == [50257, 50258, 50259]
    assert chat_tokenizer.vocab_size == 50260 and gpt2_tokenizer.vocab_size == 50257  # the original is unchanged
    assert chat_tokenizer.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    assert add_chat_tokens(chat_tokenizer) is chat_tokenizer
    assert reply_stop_ids(chat_tokenizer) == [50256, 50257, 50258, 50259]


def test_a_conversation_renders_to_exact_ids_and_trains_only_the_assistant(chat_tokenizer) -> None:
    rendered = render_conversation(chat_tokenizer, CONVERSATION)
    # "<|user|>" typed by the user stays text ("<", "|", "ass", "istant", "|", ">"), not a role token
    assert rendered.ids == [50259, 198, 3856, 4506, 13, 50256, 198,
                            50257, 198, 17250, 1279, 91, 562, 10167, 91, 29, 50256, 198,
                            50258, 198, 15496, 612, 13, 50256, 198]
    trained = [token for token, is_trained in zip(rendered.ids, rendered.mask, strict=True) if is_trained]
    assert trained == [15496, 612, 13, 50256]  # "Hello there." and its closing <|endoftext|>
    assert chat_tokenizer.decode(rendered.ids) == (
        "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi <|assistant|><|endoftext|>\n"
        "<|assistant|>\nHello there.<|endoftext|>\n"
    )
    assert render_prompt(chat_tokenizer, CONVERSATION[:2])[-2:] == [50258, 198]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), st.text(min_size=1).filter(str.strip)),
                min_size=1, max_size=4))
def test_rendering_decodes_to_the_template_text(chat_tokenizer, turns) -> None:
    messages = [{"role": role, "content": content} for role, content in turns]
    rendered = render_conversation(chat_tokenizer, messages)
    assert chat_tokenizer.decode(rendered.ids) == "".join(f"<|{role}|>\n{content}<|endoftext|>\n" for role, content in turns)
    assert len(rendered.mask) == len(rendered.ids)


@pytest.mark.parametrize(("messages", "problem"), [
    ({"role": "user"}, "not a non-empty list"),
    ([], "not a non-empty list"),
    (["hi"], "message 0 is not an object"),
    ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "  "}], "message 0 has an empty"),
])
def test_bad_messages_are_named(messages, problem) -> None:
    assert problem in message_problem(messages)
    assert message_problem(CONVERSATION) is None


def test_a_base_tokenizer_is_refused_with_the_fix(gpt2_tokenizer) -> None:
    with pytest.raises(ValueError, match="gpt25 sft"):
        require_chat_tokens(gpt2_tokenizer)
