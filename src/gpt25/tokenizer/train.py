"""Byte-level BPE training: count pre-tokens (in parallel for big inputs), then merge incrementally, in C
(gpt25.tokenizer._bpe) where the extension is built, else in Python (`_BpeMerger`), with the same merges.

Manual: docs/tokenizer.md ("How it is fast")
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt25.tokenizer.encoder import new_pretoken_table, pure_python_requested
from gpt25.tokenizer.pretokenize import (
    Chunk,
    open_input,
    plan_chunks,
    read_chunk,
    special_token_regex,
    split_on_specials,
)
from gpt25.tokenizer.workers import map_in_order

try:
    from gpt25.tokenizer._bpe import merge_pairs as c_merge_pairs
except ImportError:  # no C compiler when the package was installed
    c_merge_pairs = None

PARALLEL_MIN_BYTES = 4 << 20  # smaller inputs are counted in-process: a pool costs more than it saves
MAX_CHUNK_BYTES = 8 << 20
MAX_VOCAB_SIZE = 1_000_000  # token ids are stored as str characters while merging (chr() stops at 0x10FFFF)


def train_bpe(
    input_path: str | Path | Iterable[str | Path],
    vocab_size: int,
    special_tokens: list[str] | None = None,
    *,
    num_workers: int | None = None,
    progress: bool = False,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE on UTF-8 text file(s): (vocab {id 0..vocab_size-1: bytes}, (left, right) merges in
    order), fewer tokens if the corpus runs out of pairs. `num_workers` (default: up to 2) count large inputs."""
    paths = [Path(input_path)] if isinstance(input_path, (str, Path)) else [Path(p) for p in input_path]
    special_tokens = list(dict.fromkeys(special_tokens or []))
    _check_arguments(paths, vocab_size, special_tokens)
    word_counts = count_pretokens(paths, special_tokens, num_workers=num_workers, progress=progress)
    if not word_counts:
        raise ValueError(f"empty corpus: {', '.join(map(str, paths))} has no text outside special tokens")
    vocab = {byte: bytes([byte]) for byte in range(256)}
    for special in special_tokens:
        vocab[len(vocab)] = special.encode("utf-8")
    merges = merge_words(word_counts, vocab, vocab_size, progress=progress)
    return vocab, merges


def _check_arguments(paths: list[Path], vocab_size: int, special_tokens: list[str]) -> None:
    if not paths:
        raise ValueError("no input files given")
    minimum = 256 + len(special_tokens)
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is too large: at most {MAX_VOCAB_SIZE} is supported")
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: it must be at least 256 bytes + "
            f"{len(special_tokens)} special tokens = {minimum}"
        )
    if any(not token for token in special_tokens):
        raise ValueError("special tokens must be non-empty strings")
    for path in paths:
        if path.exists() and not path.is_dir() and not path.is_file():  # checked before opening: a FIFO blocks
            raise ValueError(
                f"{path}: not a regular file (training reads its inputs in chunks, by size and offset, "
                "which a pipe or device has not); save the text to a file first and pass that"
            )
        open_input(path).close()


# ---- counting pre-tokens ---------------------------------------------------------------------


def count_pretokens(
    paths: list[Path], special_tokens: list[str], *, num_workers: int | None = None, progress: bool = False
) -> dict[str, int]:
    """{pre-token: count} over all files; text is cut at special tokens before pre-tokenizing."""
    total_bytes = sum(path.stat().st_size for path in paths)
    if num_workers is None:
        num_workers = min(2, os.cpu_count() or 1)
    parallel = num_workers > 1 and total_bytes >= PARALLEL_MIN_BYTES
    chunk_bytes = min(MAX_CHUNK_BYTES, max(1 << 20, total_bytes // (max(num_workers, 1) * 4)))
    specials_bytes = [token.encode("utf-8") for token in special_tokens]
    chunks = [chunk for path in paths for chunk in plan_chunks(path, chunk_bytes, specials_bytes)]
    counts: Counter[str] = Counter()  # its update() of an empty Counter takes the first dict whole
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pre-tokenizing", disable=not progress) as bar:
        # no warm-up: each chunk counts into a table of its own, there is no cache for the workers to inherit
        for (_, start, end), chunk_counts in map_in_order(_count_chunk, iter(chunks), num_workers if parallel else 1,
                                                          special_tokens, warm_up=0):
            counts.update(chunk_counts)
            bar.update(end - start)
    return counts


def _count_chunk(special_tokens: list[str], chunk: Chunk) -> dict[str, int]:
    text = read_chunk(chunk)
    table = new_pretoken_table()  # numbers the pre-tokens: counting is then a bincount of the numbers
    slots = np.frombuffer(table.scan(split_on_specials(text, special_token_regex(special_tokens))[::2]), dtype=np.int32)
    return dict(zip(table.take_pending(), np.bincount(slots, minlength=len(table)).tolist(), strict=False))


# ---- merging ---------------------------------------------------------------------------------


def merge_words(
    word_counts: dict[str, int], vocab: dict[int, bytes], vocab_size: int, *, progress: bool = False
) -> list[tuple[bytes, bytes]]:
    """Merge the most frequent pair until `vocab` (extended in place) has `vocab_size` tokens or no
    pair is left; returns the merges. In C when the extension is built, else in Python."""
    if c_merge_pairs is None or pure_python_requested():
        return _BpeMerger(word_counts, vocab).run(vocab_size, progress=progress)
    with tqdm(total=max(vocab_size - len(vocab), 0), desc="merging", unit="merge", disable=not progress) as bar:
        report = (lambda done: bar.update(done - bar.n)) if progress else None
        pairs = _merge_in_c(word_counts, vocab, vocab_size, report)
        bar.update(len(pairs) - bar.n)
    merges = []
    for left, right in pairs:
        merges.append((vocab[left], vocab[right]))
        vocab[len(vocab)] = vocab[left] + vocab[right]
    return merges


def _merge_in_c(word_counts: dict[str, int], vocab: dict[int, bytes], vocab_size: int, report) -> list[tuple[int, int]]:
    """The (left id, right id) merges from gpt25.tokenizer._bpe; `report(merges done)` runs now and then."""
    kept = [(encoded, count) for encoded, count in zip(map(str.encode, word_counts), word_counts.values(), strict=True)
            if len(encoded) > 1]
    symbols = np.frombuffer(b"".join(encoded for encoded, _ in kept), dtype=np.uint8).astype(np.int32)  # byte b: id b
    lengths = np.fromiter((len(encoded) for encoded, _ in kept), dtype=np.int64, count=len(kept))
    counts = np.fromiter((count for _, count in kept), dtype=np.int64, count=len(kept))
    tokens = [vocab[token_id] for token_id in range(len(vocab))]
    return c_merge_pairs(symbols, lengths, counts, tokens, vocab_size, report)


# Heap keys must put the greatest (bytes, bytes) pair first in a min-heap. Each byte x becomes the two
# bytes (0, 255 - x) and each token ends with (1, 0), which sorts after every byte: so a token that
# is a proper prefix of another (and thus smaller) gets the larger key, as it should.
_INVERTED_BYTE = [bytes((0, 255 - byte)) for byte in range(256)]
_TOKEN_END = b"\x01\x00"


def _inverted_key(token: bytes) -> bytes:
    return b"".join(_INVERTED_BYTE[byte] for byte in token) + _TOKEN_END


class _BpeMerger:
    """Incremental BPE merges over distinct words (pre-tokens) with their counts. A word is a str with one character
    per token (chr(token id)), so finding a pair (a 2-character str) is str.find and merging str.replace, both in C."""

    def __init__(self, word_counts: dict[str, int], vocab: dict[int, bytes]) -> None:
        self.vocab = vocab
        self.keys = keys = [_inverted_key(vocab[token_id]) for token_id in range(len(vocab))]
        self.words: list[str] = []
        self.counts: list[int] = []
        for word, count in word_counts.items():
            encoded = word.encode("utf-8")
            if len(encoded) > 1:
                self.words.append(encoded.decode("latin-1"))  # byte b -> chr(b), i.e. token id b
                self.counts.append(count)
        self.pair_counts, self.pair_words = self._index_byte_pairs()
        self.heap = [(-count, keys[ord(pair[0])] + keys[ord(pair[1])], pair)
                     for pair, count in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _index_byte_pairs(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        """Each adjacent pair's total count, and the words it occurs in (once per occurrence, in order)."""
        pair_counts: dict[str, int] = defaultdict(int)
        pair_words: dict[str, list[int]] = defaultdict(list)
        for index, (word, count) in enumerate(zip(self.words, self.counts, strict=True)):
            for position in range(len(word) - 1):
                pair = word[position : position + 2]
                pair_counts[pair] += count
                pair_words[pair].append(index)
        return pair_counts, pair_words

    def run(self, vocab_size: int, progress: bool = False) -> list[tuple[bytes, bytes]]:
        merges: list[tuple[bytes, bytes]] = []
        with tqdm(total=max(vocab_size - len(self.vocab), 0), desc="merging", unit="merge", disable=not progress) as bar:
            while len(self.vocab) < vocab_size:
                pair = self._pop_best_pair()
                if pair is None:
                    break
                merges.append((self.vocab[ord(pair[0])], self.vocab[ord(pair[1])]))
                self._merge(pair)
                bar.update(1)
        return merges

    def _pop_best_pair(self) -> str | None:
        """The most frequent pair (greatest bytes on ties); stale heap entries are fixed lazily."""
        heap, pair_counts = self.heap, self.pair_counts
        while heap:
            negative_count, key, pair = heapq.heappop(heap)
            current = pair_counts.get(pair, 0)
            if current == -negative_count:
                return pair
            if 0 < current < -negative_count:
                heapq.heappush(heap, (-current, key, pair))
        return None

    def _merge(self, pair: str) -> None:
        """Merge every occurrence of `pair`, updating the counts of the neighbouring pairs."""
        new_id = len(self.vocab)
        a, b = pair
        merged = chr(new_id)
        self.vocab[new_id] = self.vocab[ord(a)] + self.vocab[ord(b)]
        self.keys.append(self.keys[ord(a)][:-2] + self.keys[ord(b)])  # a's key without its end mark, then b's
        pair_counts, words, counts = self.pair_counts, self.words, self.counts
        # Pairs containing the new token are all new: gather their counts and word indexes here.
        gained_counts: dict[str, int] = defaultdict(int)
        gained_words: dict[str, list[int]] = defaultdict(list)
        for index in self.pair_words.pop(pair):
            word = words[index]
            position = word.find(pair)
            if position < 0:
                continue  # already merged, or lost the pair to an earlier merge (lists are cleaned lazily)
            count = counts[index]
            last = len(word) - 1
            previous_end = -1
            while position >= 0:
                next_position = word.find(pair, position + 2)
                if position > 0:
                    before = word[position - 1]
                    pair_counts[before + a] -= count
                    # right after the previous occurrence ("aaaa"), `before` is that merged token now
                    left_pair = (merged if position == previous_end else before) + merged
                    gained_counts[left_pair] += count
                    gained_words[left_pair].append(index)
                previous_end = position + 2
                # an occurrence right after this one counts the (merged, merged) pair as its left pair
                if position + 2 <= last and next_position != previous_end:
                    after = word[position + 2]
                    pair_counts[b + after] -= count
                    gained_counts[merged + after] += count
                    gained_words[merged + after].append(index)
                position = next_position
            words[index] = word.replace(pair, merged)  # left to right, no overlaps: the occurrences found above
        del pair_counts[pair]
        pair_counts.update(gained_counts)
        self.pair_words.update(gained_words)
        keys, heap = self.keys, self.heap
        merged_key = keys[new_id]
        for new_pair, pair_count in gained_counts.items():
            first, second = new_pair
            key = merged_key + keys[ord(second)] if first == merged else keys[ord(first)] + merged_key
            heapq.heappush(heap, (-pair_count, key, new_pair))
