"""Conversations for `gpt25 sft`: read from a source (unusable ones skipped and counted), held out by hash,
rendered and packed into rows with a loss mask, and batched by PackedLoader.
Manual: docs/chat.md (Conversation data, `gpt25 sft`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt25.data.default_corpus import CHAT_SET_SPEC, iter_chat_set, open_out_file, text_hash
from gpt25.data.loader import STATE_VERSION, SeededBatches
from gpt25.data.sources import JSONL_SUFFIXES, expand_paths, iter_hf_field, iter_jsonl_records, iter_parquet_column
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import add_chat_tokens, message_problem, render_conversation
from gpt25.tokenizer.codec import END_OF_TEXT

IGNORE_INDEX = -100  # the target of a position that is not trained (cross_entropy's ignore_index)
_MESSAGE_INDEX = re.compile(r"message \d+")


@dataclass
class ConversationStats:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    cut: int = 0
    dropped: int = 0  # cut so that no assistant token was left

    def report(self) -> str:
        """One line for the log, e.g. '1,200 conversations; skipped 3 (2 no assistant turn, ...); 4 cut'."""
        line = f"{self.kept:,} conversations"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
            line += f"; skipped {sum(self.skipped.values()):,} ({reasons})"
        if self.cut:
            line += f"; {self.cut:,} longer than the context, cut"
        if self.dropped:
            line += f" ({self.dropped:,} of them dropped: nothing of the assistant left)"
        return line


def iter_conversations(spec: str, stats: ConversationStats) -> Iterator[list[dict]]:
    """The usable conversations of a source; skipped ones counted in `stats` by problem, message index left out."""
    for messages in _iter_raw_messages(spec):
        problem = message_problem(messages)
        if problem is None and not any(message["role"] == "assistant" for message in messages):
            problem = "no assistant turn"
        if problem:  # "message 3 is not an object" and "message 5 is not an object" count as one problem
            stats.skipped[_MESSAGE_INDEX.sub("a message", problem)] += 1
        else:
            stats.kept += 1
            yield messages


# `gpt25 sft`'s own flags for local conversations, where a Hub dataset cannot be read
LOCAL_CHATS = (f"give conversation files (--data 'DIR/*.jsonl', .jsonl / .parquet rows with a 'messages' list) or "
               f"--data {CHAT_SET_SPEC} (the embedded chat set)")


def _iter_raw_messages(spec: str) -> Iterator[Any]:
    if spec == CHAT_SET_SPEC:
        yield from iter_chat_set()
    elif spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        yield from iter_hf_field(name, config or None, "messages", "conversation datasets need a 'messages' list "
                                 "of {role, content}", alternative=LOCAL_CHATS)
    else:
        try:
            paths = expand_paths(spec)
        except FileNotFoundError:
            raise FileNotFoundError(f"--data {spec!r} matched no files; {LOCAL_CHATS}") from None
        for path in paths:
            if path.suffix == ".parquet":
                yield from iter_parquet_column(path, "messages", "conversation files need a 'messages' list of "
                                               "{role, content}")
            elif path.suffix in JSONL_SUFFIXES:
                yield from iter_jsonl_records(path, _line_messages)
            else:
                raise ValueError(f"{path}: conversations come from .jsonl or .parquet files, "
                                 f"'hf:NAME[:CONFIG]' or '{CHAT_SET_SPEC}'")


def _line_messages(line: str) -> list[Any]:
    if not line.strip():
        return []
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a JSON object ({error.msg}); conversation files hold "
                         'one {"messages": [...]} object per line') from None
    if not isinstance(record, dict) or "messages" not in record:
        raise ValueError("no 'messages' field; conversation files hold "
                         'one {"messages": [{"role": ..., "content": ...}, ...]} object per line')
    return [record["messages"]]


def is_validation(messages: list[dict], val_fraction: float) -> bool:
    """Whether a conversation is held out: a hash of its content, so the split never depends on order."""
    return text_hash(json.dumps(messages, sort_keys=True)) / 2**64 < val_fraction


def write_chat_set(path: str | Path, tokenizer_dir: str | Path | None = None,
                   val_fraction: float = 0.05) -> dict[str, int]:
    """Write the embedded chat set as JSONL (atomically); returns its counts (tokens only given a tokenizer)."""
    tokenizer = add_chat_tokens(Tokenizer.load(tokenizer_dir)) if tokenizer_dir else None
    sizes = dict.fromkeys(("conversations", "validation", "messages", "tokens", "assistant_tokens"), 0)
    with open_out_file(path, "chat.jsonl") as file:
        for messages in iter_chat_set():
            file.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            sizes["conversations"] += 1
            sizes["validation"] += is_validation(messages, val_fraction)
            sizes["messages"] += len(messages)
            if tokenizer is not None:
                rendered = render_conversation(tokenizer, messages)
                sizes["tokens"] += len(rendered.ids)
                sizes["assistant_tokens"] += sum(rendered.mask)
    return sizes


@dataclass
class PackedRows:
    """Rows of packed conversations: tokens (rows, row_length) int32 and, per token, whether it is trained."""

    tokens: np.ndarray
    trained: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rows: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the given rows, each (len(rows), row_length - 1) int64; untrained targets IGNORE_INDEX."""
        tokens = torch.from_numpy(self.tokens[rows].astype(np.int64))  # (batch, row_length)
        trained = torch.from_numpy(self.trained[rows, 1:])  # (batch, row_length - 1)
        targets = torch.where(trained, tokens[:, 1:], IGNORE_INDEX)
        return tokens[:, :-1].to(device), targets.to(device)


def pack_conversations(conversations: Iterable[list[dict]], tokenizer: Tokenizer, row_length: int,
                       stats: ConversationStats) -> PackedRows:
    """Render and pack conversations in order into rows of `row_length` tokens: one that does not fit in a row's
    rest starts the next (the rest is padding); one longer than a row is cut, dropped if nothing trained is left."""
    pad_id = tokenizer.token_id(END_OF_TEXT)
    rows: list[tuple[list[int], list[bool]]] = []  # (ids, trained) of each row
    for messages in conversations:
        rendered = render_conversation(tokenizer, messages)
        ids, trained = rendered.ids, rendered.mask
        if len(ids) > row_length:
            stats.cut += 1
            ids, trained = ids[:row_length], trained[:row_length]
            if not any(trained[1:]):
                stats.dropped += 1
                continue
        # a conversation starts with its first role token, never trained: as a row's first token (never a
        # target) it loses nothing, so every assistant token is a target exactly once per pass over the rows
        if not rows or len(rows[-1][0]) + len(ids) > row_length:
            rows.append(([], []))
        rows[-1][0].extend(ids)
        rows[-1][1].extend(trained)
    tokens = np.full((len(rows), row_length), pad_id, dtype=np.int32)
    trained_array = np.zeros((len(rows), row_length), dtype=bool)
    for index, (ids, trained) in enumerate(rows):
        tokens[index, :len(ids)] = ids
        trained_array[index, :len(trained)] = trained
    return PackedRows(tokens, trained_array)


class PackedLoader(SeededBatches):
    """Seeded, rank-disjoint batches of packed rows, resumable to the exact batch: a stream of epochs, each a
    fresh permutation of all rows, so a batch may span two epochs and each epoch is every row once."""

    def __init__(self, rows: PackedRows, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if not len(rows):
            raise ValueError("no conversations to train on")
        super().__init__(batch_size, rank, world_size, seed, device)
        self.rows = rows  # self.position: rows consumed by all ranks together since the first epoch began

    @property
    def epoch(self) -> float:
        return self.position / len(self.rows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next (inputs, targets), each (batch_size, row_length - 1) int64 on the device."""
        first = self.position + self.rank * self.batch_size
        row_indices = np.array([self._row_at(position) for position in range(first, first + self.batch_size)])
        self.position += self.global_batch_size
        return self.rows.batch(row_indices, self.device)

    def _row_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.rows))
        return int(self._permutation(epoch, len(self.rows))[offset])

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "position": self.position, "seed": self.seed, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off (the same packed rows and seed; any world or batch size)."""
        expected = {"version": STATE_VERSION, "seed": self.seed, "num_rows": len(self.rows)}
        self._check_state(state, expected, "these conversations",
                          "resume with the same --data, --seed, --context_length and --val_fraction")
        self.position = int(state["position"])
