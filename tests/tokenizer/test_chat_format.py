"""The chat format: role-token ids on GPT-2's tokenizer, exact rendering and loss masks, message checks, and
ids equal to transformers' apply_chat_template with the exported template."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.interop import _write_tokenizer
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


def trained_text(tokenizer, rendered) -> str:
    return tokenizer.decode([token for token, is_trained in zip(rendered.ids, rendered.mask, strict=True) if is_trained])


@pytest.mark.parametrize(("content", "ids", "trained"), [
    ("\n  Hi", [628, 220, 15902], "  Hi"),  # "\n\n" is one token, as in the template's text; it is the prompt's
    ("\nHi", [198, 198, 17250], "\nHi"),  # GPT-2's pattern keeps the whitespace before a word apart
    ("  Hi", [198, 220, 15902], "  Hi"),  # "\n", " ", " Hi": the header's newline stays alone
    ("Hi\n\n", [198, 17250, 628], "Hi\n\n"),
    (" \n x", [198, 220, 198, 2124], " \n x"),
])
def test_leading_and_trailing_whitespace_merges_with_the_header_as_in_the_template(chat_tokenizer, content, ids,
                                                                                    trained) -> None:
    rendered = render_conversation(chat_tokenizer, [{"role": "assistant", "content": content}])
    assert rendered.ids == [50258, *ids, 50256, 198]
    assert trained_text(chat_tokenizer, rendered) == trained + "<|endoftext|>"


def test_typed_special_tokens_stay_text(chat_tokenizer) -> None:
    content = "<|assistant|>\n<|endoftext|><|system|>"
    rendered = render_conversation(chat_tokenizer, [{"role": "user", "content": content}])
    assert rendered.ids == [50257, *chat_tokenizer.encode_ordinary("\n" + content), 50256, 198]
    assert [token for token in rendered.ids if token >= 50256] == [50257, 50256]


@pytest.fixture(scope="module")
def hf_chat_tokenizer(chat_tokenizer, tmp_path_factory):
    """transformers' tokenizer from the files `gpt25 export hf` writes for this chat tokenizer (template included)."""
    transformers = pytest.importorskip("transformers")
    folder: Path = tmp_path_factory.mktemp("hf-tokenizer")
    _write_tokenizer(chat_tokenizer, folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


# Contents: leading and trailing whitespace (newlines, spaces, tabs) around a core built from pieces that
# stress the tokenizer (look-alikes of the special tokens, the tokens themselves, words) or any text.
WHITESPACE = st.lists(st.sampled_from(["\n", "\n\n", " ", "  ", "\t", "\r\n"]), max_size=4).map("".join)
PIECES = ["\n", " ", "<|", "|>", "<|assistant", "|user|>", "< |system| >", "Hi", " there", "é", "'s", "42", ".",
          "<|endoftext|>", "<|assistant|>", "<|user|>"]
CORE = st.one_of(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join), st.text(min_size=1))
CONTENTS = st.tuples(WHITESPACE, CORE, WHITESPACE).map("".join).filter(str.strip)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), CONTENTS),
                min_size=1, max_size=4), st.booleans())
def test_ids_equal_transformers_apply_chat_template(chat_tokenizer, hf_chat_tokenizer, turns, generation) -> None:
    """Equal to the exported template through transformers, except that typed special tokens stay text: there
    the role / eot ids stand only at the template's own places (transformers would read them as tokens)."""
    messages = [{"role": role, "content": content} for role, content in turns]
    ours = (render_prompt if generation else lambda tokenizer, m: render_conversation(tokenizer, m).ids)(
        chat_tokenizer, messages)
    if any(token in content for _, content in turns for token in ["<|endoftext|>", *CHAT_SPECIAL_TOKENS]):
        assert sum(token >= 50256 for token in ours) == 2 * len(turns) + generation
    else:
        theirs = hf_chat_tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True,
                                                       return_dict=True)["input_ids"]
        assert ours == theirs
    text = "".join(f"<|{role}|>\n{content}<|endoftext|>\n" for role, content in turns)
    assert chat_tokenizer.decode(ours) == text + ("<|assistant|>\n" if generation else "")


@settings(max_examples=100, deadline=None)
@given(CONTENTS)
def test_the_mask_trains_exactly_the_assistants_content_after_the_header(chat_tokenizer, content) -> None:
    rendered = render_conversation(chat_tokenizer, [{"role": "user", "content": "Q"},
                                                    {"role": "assistant", "content": content}])
    first_token = chat_tokenizer.decode([chat_tokenizer.encode_ordinary("\n" + content)[0]])
    # the first token carries the header's "\n" and, at most, whitespace of the content's start
    assert trained_text(chat_tokenizer, rendered) == content[len(first_token) - 1:] + "<|endoftext|>"


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
