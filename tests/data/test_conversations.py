"""Conversation sources, skipped-conversation counts, the embedded chat set, packing and the packed loader."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.data.conversations import (
    IGNORE_INDEX,
    ConversationStats,
    PackedLoader,
    is_validation,
    iter_conversations,
    pack_conversations,
)
from gpt25.data.default_corpus import describe_arguments, iter_chat_set
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import add_chat_tokens, render_conversation

TOKENIZER = add_chat_tokens(Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"]))
GOOD = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_bad_conversations_are_skipped_and_counted_by_reason(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": GOOD},
        {"messages": [{"role": "bot", "content": "x"}, *GOOD]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": "Hi"},
        {"messages": [{"role": "system", "content": "x"}, *GOOD]},
    ])
    stats = ConversationStats()
    kept = list(iter_conversations(str(source), stats))
    assert kept == [GOOD, [{"role": "system", "content": "x"}, *GOOD]] and stats.kept == 2
    assert stats.skipped == Counter({
        "a message has unknown role 'bot' (known: user, assistant, system)": 1,
        "a message has an empty or non-string content": 1, "no assistant turn": 1,
        "'messages' is not a non-empty list": 1})
    assert stats.report().startswith("2 conversations; skipped 4 (")


def test_a_malformed_file_is_one_error_naming_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "chats.jsonl"
    source.write_text(json.dumps({"messages": GOOD}) + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"^{source}:2: not a JSON object"):
        list(iter_conversations(str(source), ConversationStats()))
    write_jsonl(source, [{"text": "plain"}])
    with pytest.raises(ValueError, match=rf"^{source}:1: no 'messages' field"):
        list(iter_conversations(str(source), ConversationStats()))


def test_parquet_conversations_are_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"messages": [GOOD, [{"role": "user", "content": "x"}]]}), tmp_path / "chats.parquet")
    stats = ConversationStats()
    assert list(iter_conversations(str(tmp_path / "chats.parquet"), stats)) == [GOOD]
    assert stats.skipped == Counter({"no assistant turn": 1})


def test_the_chat_set_is_deterministic_and_every_conversation_is_trainable() -> None:
    first = list(islice(iter_chat_set(), 200))
    assert first == list(islice(iter_chat_set(), 200))
    stats = ConversationStats()
    assert len(list(iter_conversations("python-docs-chat", stats))) == stats.kept > 5000 and not stats.skipped
    assert {message["role"] for messages in first for message in messages} == {"system", "user", "assistant"}
    assert any(len(messages) >= 4 for messages in first)  # some are multi-turn
    assert describe_arguments("json.dumps", "obj, *, indent=None") == (
        "`json.dumps(obj, *, indent=None)` takes `obj` and `indent` (optional, default `None`) (keyword-only).")


def test_the_held_out_split_is_a_hash_of_the_conversation() -> None:
    held_out = [is_validation([{"role": "user", "content": str(index)}, GOOD[1]], 0.2) for index in range(2000)]
    assert 0.17 < sum(held_out) / 2000 < 0.23
    assert not is_validation(GOOD, 0.0) and is_validation(GOOD, 0.9999999)


MESSAGES = st.lists(st.builds(lambda role, content: {"role": role, "content": content},
                              st.sampled_from(["system", "user", "assistant"]),
                              st.text(alphabet="abc xyz\n", min_size=1, max_size=12).filter(str.strip)),
                    min_size=1, max_size=5).map(lambda messages: messages + [{"role": "assistant", "content": "ok"}])


@settings(max_examples=40, deadline=None)
@given(conversations=st.lists(MESSAGES, min_size=1, max_size=8), batch_size=st.integers(1, 3),
       world_size=st.integers(1, 2))
def test_packing_trains_every_assistant_token_once_per_epoch(conversations, batch_size, world_size) -> None:
    row_length = 200  # longer than any generated conversation: nothing is cut
    stats = ConversationStats()
    rows = pack_conversations(conversations, TOKENIZER, row_length, stats)
    assert stats.cut == 0 and rows.tokens.shape[1] == row_length
    expected: Counter = Counter()
    for messages in conversations:
        rendered = render_conversation(TOKENIZER, messages)
        expected.update(token for token, trained in zip(rendered.ids, rendered.mask, strict=True) if trained)
    # Whole epochs of batches over all ranks: lcm(rows, global batch) rows = that many / rows epochs.
    global_batch = batch_size * world_size
    total_rows = math.lcm(len(rows), global_batch)
    loaders = [PackedLoader(rows, batch_size, rank=rank, world_size=world_size, seed=3) for rank in range(world_size)]
    seen: Counter = Counter()
    for _ in range(total_rows // global_batch):
        for loader in loaders:
            inputs, targets = loader.next_batch()
            assert inputs.shape == targets.shape == (batch_size, row_length - 1)
            seen.update(targets[targets != IGNORE_INDEX].tolist())
    epochs = total_rows // len(rows)
    assert seen == Counter({token: count * epochs for token, count in expected.items()})
    assert loaders[0].epoch == epochs


def test_a_conversation_longer_than_a_row_is_cut_and_counted() -> None:
    long = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 50}]
    only_user = [{"role": "user", "content": "q" * 50}, {"role": "assistant", "content": "a"}]
    stats = ConversationStats()
    rows = pack_conversations([GOOD, long, only_user], TOKENIZER, 20, stats)
    assert (stats.cut, stats.dropped, len(rows)) == (2, 1, 2)
    # <|user|> \n q <|endoftext|> \n <|assistant|> \n untrained, then the cut assistant content
    assert rows.trained[1].tolist() == [False] * 7 + [True] * 13
    assert "2 longer than the context, cut (1 of them dropped" in stats.report()


def test_the_loader_resumes_at_the_same_batch() -> None:
    rows = pack_conversations([GOOD] * 30, TOKENIZER, 40, ConversationStats())
    loader = PackedLoader(rows, 4, seed=1)
    for _ in range(3):
        loader.next_batch()
    resumed = PackedLoader(rows, 4, seed=1)
    resumed.load_state_dict(loader.state_dict())
    assert all((a == b).all() for a, b in zip(loader.next_batch(), resumed.next_batch(), strict=True))
    with pytest.raises(ValueError, match="loader state does not fit"):
        PackedLoader(rows, 4, seed=2).load_state_dict(loader.state_dict())
