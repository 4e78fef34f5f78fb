"""The chat format (`<|role|>` "\\n" content `<|endoftext|>` "\\n" per message), shared by fine-tuning, `gpt25 chat`,
`gpt25 serve` and the exported template: role tokens, rendering with a loss mask, and message checks.

Manual: docs/chat.md ("The chat format")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpt25.tokenizer.codec import END_OF_TEXT, Tokenizer

ROLE_TOKENS = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}  # id order: as listed
CHAT_SPECIAL_TOKENS = list(ROLE_TOKENS.values())
# The same format for transformers' apply_chat_template (tokenizer_config.json's "chat_template").
JINJA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class RenderedConversation:
    """Token ids of a conversation and, per id, whether it is trained (an assistant's content or closing eot)."""

    ids: list[int]
    mask: list[bool]


def add_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the three role tokens registered (the same tokenizer when it has them)."""
    return tokenizer if has_chat_tokens(tokenizer) else tokenizer.with_special_tokens(CHAT_SPECIAL_TOKENS)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    return all(token in tokenizer.special_tokens for token in CHAT_SPECIAL_TOKENS)


def require_chat_tokens(tokenizer: Tokenizer) -> None:
    """ValueError (one line, with the fix) when the tokenizer has no role tokens: a base model, not a chat model."""
    if not has_chat_tokens(tokenizer):
        raise ValueError(
            "this tokenizer has no chat role tokens (<|user|>, <|assistant|>, <|system|>): it belongs to a base "
            "model; fine-tune it into a chat model with `gpt25 sft`"
        )


def message_problem(messages: object) -> str | None:
    """Why `messages` is not a conversation to train on or answer (None when it is): a list of
    {"role", "content"} dicts with known roles and non-empty string contents."""
    if not isinstance(messages, list) or not messages:
        return "'messages' is not a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {index} is not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLE_TOKENS:
            return f"message {index} has unknown role {role!r} (known: {', '.join(ROLE_TOKENS)})"
        if not isinstance(content, str) or not content.strip():
            return f"message {index} has an empty or non-string content"
    return None


def render_conversation(tokenizer: Tokenizer, messages: Sequence[dict]) -> RenderedConversation:
    """The ids of `messages` (checked by `message_problem`) in the chat format, and the loss mask."""
    newline = tokenizer.encode_ordinary("\n")
    eot_id = tokenizer.token_id(END_OF_TEXT)
    ids: list[int] = []
    mask: list[bool] = []
    for message in messages:
        trained = message["role"] == "assistant"
        # The header's newline and the content, one piece of text as in the template's rendering; always
        # ordinary text, so a user who types "<|assistant|>" cannot forge a turn (transformers would).
        body = tokenizer.encode_ordinary("\n" + message["content"])
        ids += [tokenizer.token_id(ROLE_TOKENS[message["role"]]), *body, eot_id, *newline]
        # untrained: the role token and body[0] (it carries the header's newline); trained: the rest and the eot
        mask += [False, False] + [trained] * len(body) + [False] * len(newline)
    return RenderedConversation(ids, mask)


def render_prompt(tokenizer: Tokenizer, messages: Sequence[dict]) -> list[int]:
    """The ids of `messages` followed by the generation prompt: what the model continues with its reply."""
    generation_prompt = [tokenizer.token_id(ROLE_TOKENS["assistant"]), *tokenizer.encode_ordinary("\n")]
    return render_conversation(tokenizer, messages).ids + generation_prompt


def reply_stop_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that end the model's turn: `<|endoftext|>` and any role token (a model starting the next turn)."""
    return [tokenizer.token_id(END_OF_TEXT), *(tokenizer.token_id(token) for token in CHAT_SPECIAL_TOKENS)]
