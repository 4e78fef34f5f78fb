"""gpt25.chat: replies streamed in whole characters, stopping at end-of-text or a role token, the history
trimmed to the context, base models refused; the reply is the model's greedy continuation of render_prompt."""

from __future__ import annotations

import pytest
import torch

from gpt25.chat import chat, stream_chat, trim_history
from gpt25.engine import generate_tokens
from gpt25.tokenizer.chat_format import add_chat_tokens, render_prompt, reply_stop_ids

EOT, USER, ASSISTANT, SYSTEM = 256, 257, 258, 259  # the byte tokenizer's end-of-text, then the role tokens added
NEWLINE = ord("\n")
QUESTION = [{"role": "user", "content": "hi"}]


@pytest.fixture
def chat_tokenizer(byte_tokenizer):
    return add_chat_tokens(byte_tokenizer)


@pytest.fixture
def random_chat_model(random_lm):
    """Factory: a random base model over the byte tokenizer, grown by the three role tokens' rows."""
    def build():
        model = random_lm()
        model.grow_vocab(260)
        return model
    return build


@pytest.fixture
def chained_model(bigram_lm, chain):
    """Factory: a model whose reply (after the generation prompt's newline) is the given ids, in that order."""
    return lambda *token_ids: bigram_lm(chain(NEWLINE, *token_ids))


def test_role_token_ids_of_the_byte_tokenizer(chat_tokenizer) -> None:
    assert reply_stop_ids(chat_tokenizer) == [EOT, USER, ASSISTANT, SYSTEM]


@pytest.mark.parametrize("stop_id", [EOT, USER, ASSISTANT, SYSTEM])
def test_a_reply_stops_at_end_of_text_or_any_role_token(chat_tokenizer, stop_id: int, chained_model) -> None:
    model = chained_model(*b"OK", stop_id, *b"never")
    assert chat(model, chat_tokenizer, QUESTION, temperature=0, max_new_tokens=20) == "OK"


def test_a_reply_stops_after_max_new_tokens(chat_tokenizer, chained_model) -> None:
    model = chained_model(*b"abcdefgh")
    assert chat(model, chat_tokenizer, QUESTION, temperature=0, max_new_tokens=3) == "abc"


def test_multibyte_characters_stream_whole(chat_tokenizer, chained_model) -> None:
    reply_bytes = "é€!".encode()  # 2 + 3 + 1 bytes, one token each
    model = chained_model(*reply_bytes, EOT)
    pieces = list(stream_chat(model, chat_tokenizer, QUESTION, temperature=0, max_new_tokens=20))
    assert pieces == ["é", "€", "!"]


def test_a_cut_character_ends_the_reply_as_a_replacement_character(chat_tokenizer, chained_model) -> None:
    model = chained_model(*b"a", 0xE2, 0x82, EOT)  # the first two bytes of a three-byte character
    assert list(stream_chat(model, chat_tokenizer, QUESTION, temperature=0, max_new_tokens=9)) == ["a", "\ufffd"]


def test_streamed_pieces_join_to_the_whole_reply(chat_tokenizer, random_chat_model) -> None:
    model = random_chat_model()
    settings = {"temperature": 1.0, "top_p": 0.95, "top_k": 200, "seed": 3, "max_new_tokens": 30}
    pieces = list(stream_chat(model, chat_tokenizer, QUESTION, **settings))
    assert len(pieces) > 1
    assert "".join(pieces) == chat(model, chat_tokenizer, QUESTION, **settings)
    assert chat(model, chat_tokenizer, QUESTION, **settings | {"seed": 4}) != "".join(pieces)


def test_the_greedy_reply_is_the_models_continuation_of_the_prompt(chat_tokenizer, random_chat_model) -> None:
    """The KV-cached reply equals generate_tokens without a cache on render_prompt, cut at the first stop id."""
    model = random_chat_model()
    messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    prompt = torch.tensor([render_prompt(chat_tokenizer, messages)])
    expected = generate_tokens(model, prompt, max_new_tokens=25, use_cache=False)[0].tolist()
    stops = [index for index, token in enumerate(expected) if token in reply_stop_ids(chat_tokenizer)]
    expected = expected[: stops[0]] if stops else expected
    assert len(expected) >= 10  # a reply long enough to compare
    reply = chat(model, chat_tokenizer, messages, temperature=0, max_new_tokens=25)
    assert reply == chat_tokenizer.decode(expected)
    # the fixed-shape cache a GPU captures in a CUDA graph (here without the graph) answers the same
    assert chat(model, chat_tokenizer, messages, temperature=0, max_new_tokens=25, static_decode=True) == reply


def test_a_base_models_tokenizer_is_refused_with_the_fix(byte_tokenizer, random_lm) -> None:
    with pytest.raises(ValueError, match="no chat role tokens.*gpt25 sft"):
        chat(random_lm(), byte_tokenizer, QUESTION)


def test_bad_conversations_and_settings_are_refused(chat_tokenizer, random_chat_model, random_lm) -> None:
    model = random_chat_model()
    with pytest.raises(ValueError, match="message 0 has unknown role 'robot'"):
        chat(model, chat_tokenizer, [{"role": "robot", "content": "beep"}])
    with pytest.raises(ValueError, match=r"max_new_tokens \(64\) must fit the context of 64 tokens"):
        chat(model, chat_tokenizer, QUESTION, max_new_tokens=64)
    with pytest.raises(ValueError, match="top_p"):
        chat(model, chat_tokenizer, QUESTION, top_p=0)
    with pytest.raises(ValueError, match="tokenizer has 260 tokens but the model's vocab_size is 257"):
        chat(random_lm(), chat_tokenizer, QUESTION, max_new_tokens=8)


def turns(*contents: str) -> list[dict]:
    """Alternating user / assistant messages with these contents."""
    return [{"role": ("user", "assistant")[index % 2], "content": content} for index, content in enumerate(contents)]


def test_trimming_drops_the_oldest_turns_and_keeps_the_system_message(chat_tokenizer) -> None:
    # Each byte-tokenizer message renders as len(content) + 4 tokens, the generation prompt as 2.
    system = [{"role": "system", "content": "S" * 6}]  # 10 tokens
    messages = system + turns("a" * 10, "b" * 10, "c" * 10)  # + 3 x 14, + 2: 54 tokens
    assert trim_history(chat_tokenizer, messages, context_length=64, max_new_tokens=10) == (messages, 0)
    kept, num_dropped = trim_history(chat_tokenizer, messages, context_length=64, max_new_tokens=20)
    # 54 > 44: "a" goes, and then "b", an assistant's reply that no longer answers anything
    assert (kept, num_dropped) == (system + turns("c" * 10), 2)
    assert len(render_prompt(chat_tokenizer, kept)) == 26
    kept, num_dropped = trim_history(chat_tokenizer, turns("a" * 10, "b" * 10, "c" * 10), 64, 22)
    assert (kept, num_dropped) == (turns("a" * 10, "b" * 10, "c" * 10)[2:], 2)


def test_trimming_refuses_a_last_message_that_cannot_fit(chat_tokenizer) -> None:
    with pytest.raises(ValueError, match=r"the prompt \(48 tokens\) \+ max_new_tokens \(20\) must fit the context of 64 tokens"):
        trim_history(chat_tokenizer, [{"role": "system", "content": "S" * 6}, *turns("a" * 32)], 64, 20)


def test_chat_warns_when_it_drops_turns(chat_tokenizer, chained_model) -> None:
    model = chained_model(*b"OK", EOT)
    with pytest.warns(UserWarning, match="dropped the 2 oldest messages so the conversation fits the context of 64"):
        reply = chat(model, chat_tokenizer, turns("a" * 20, "b" * 20, "c"), temperature=0, max_new_tokens=20)
    assert reply == "OK"



def test_stream_chat_checks_its_arguments_when_called_not_when_read(byte_tokenizer, random_lm) -> None:
    with pytest.raises(ValueError, match="no chat role tokens"):
        stream_chat(random_lm(), byte_tokenizer, QUESTION)  # the pieces are never asked for
