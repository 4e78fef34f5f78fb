"""The Tokenizer: byte-level BPE encoding and decoding with GPT-2's pre-tokenizer.

Manual: docs/tokenizer.md
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from numbers import Integral
from pathlib import Path

import numpy as np

from gpt25.files import write_text_atomic
from gpt25.tokenizer import io
from gpt25.tokenizer.bpe import ID_MASK
from gpt25.tokenizer.encoder import PythonEncoder, new_encoder
from gpt25.tokenizer.pretokenize import (
    SAFE_BYTE_CUT,
    Chunk,
    last_safe_cut,
    plan_chunks,
    read_chunk,
    special_token_regex,
    split_at_safe_cuts,
    split_on_specials,
)
from gpt25.tokenizer.workers import map_in_order

END_OF_TEXT = "<|endoftext|>"
# The encoder caches each pre-token's ids (25 MB of English has only about 100k distinct pre-tokens), so most
# of the work is pre-tokenizing and finding pre-tokens in the cache. It is emptied when it grows past this.
CACHE_LIMIT = 1_000_000
STREAM_CHUNK_CHARS = 1 << 16  # encode_iterable gathers at least this much text per encode() call
ENCODE_CHUNK_CHARS = 1 << 20  # encode() pre-tokenizes longer texts in pieces of about this size
FILE_CHUNK_BYTES = 1 << 20  # a pool worker's task when encoding a file: about this many bytes (or characters)


class Tokenizer:
    """Byte-level BPE tokenizer: `vocab` maps ids 0..N-1 to bytes, `merges` are in rank order; special tokens
    not already in `vocab` get the next free ids, in the order given."""

    def __init__(self, vocab: io.Vocab, merges: io.Merges, special_tokens: list[str] | None = None) -> None:
        self._setup(
            {int(token_id): bytes(token) for token_id, token in vocab.items()},
            [(bytes(a), bytes(b)) for a, b in merges],
            list(dict.fromkeys(special_tokens or [])),
        )

    def _setup(self, vocab: io.Vocab, merges: io.Merges, special_tokens: list[str],
               merge_ids: np.ndarray | None = None) -> None:
        """Build the lookup tables from vocab and merges, which become this tokenizer's own (no copy)."""
        self.vocab, self.merges, self.special_tokens = vocab, merges, special_tokens
        self._token_to_id = self._build_token_index()
        self._special_ids = {token: self._token_to_id[token.encode("utf-8")] for token in self.special_tokens}
        self._byte_ids = self._build_byte_ids()
        if len(self.vocab) > ID_MASK:
            raise ValueError(f"vocab too large: at most {ID_MASK} tokens are supported")
        self._merge_ids = self._build_merge_ids() if merge_ids is None else merge_ids
        self._special_regex = special_token_regex(self.special_tokens)
        self._max_special_chars = max((len(token) for token in self.special_tokens), default=0)
        self._encoder = self._new_encoder()
        self._fingerprint: str | None = None

    def _build_token_index(self) -> dict[bytes, int]:
        """{bytes: id}, the first id where two have the same bytes; adds the special tokens the vocab lacks."""
        if self.vocab and (min(self.vocab) != 0 or max(self.vocab) != len(self.vocab) - 1):
            raise ValueError(f"vocab ids must be 0..{len(self.vocab) - 1} with no gaps")
        token_to_id = {self.vocab[token_id]: token_id for token_id in reversed(range(len(self.vocab)))}
        for special in self.special_tokens:
            encoded = special.encode("utf-8")
            if encoded not in token_to_id:
                token_to_id[encoded] = len(self.vocab)
                self.vocab[len(self.vocab)] = encoded
        return token_to_id

    def _build_byte_ids(self) -> list[int]:
        missing = [byte for byte in range(256) if bytes([byte]) not in self._token_to_id]
        if missing:
            raise ValueError(f"vocab lacks {len(missing)} single-byte tokens (first: byte {missing[0]}); "
                             "a byte-level BPE vocab needs all 256")
        return [self._token_to_id[bytes([byte])] for byte in range(256)]

    def _build_merge_ids(self) -> np.ndarray:
        """(merges, 3) int64: the left, right and merged id of each merge, in rank order."""
        lefts, rights = [left for left, _ in self.merges], [right for _, right in self.merges]
        return io.merge_ids(lefts, rights, self._token_to_id, lambda rank: f"merge {rank} {self.merges[rank]!r}")

    def _new_encoder(self):
        return new_encoder(self._merge_ids, self._byte_ids, list(self._special_ids.values()))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_encoder"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._encoder = self._new_encoder()

    # ---- construction from files -------------------------------------------------------------

    @classmethod
    def from_files(
        cls, vocab_path: str | Path, merges_path: str | Path, special_tokens: list[str] | None = None
    ) -> Tokenizer:
        """Build from GPT-2-style `vocab.json` + `merges.txt` (e.g. OpenAI's GPT-2 files)."""
        vocab, merges, merge_ids = io.read_vocab_and_merges(vocab_path, merges_path)
        return cls._from_parts(vocab, merges, list(dict.fromkeys(special_tokens or [])), merge_ids)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a folder written by `save` (see gpt25.tokenizer.io for the format)."""
        vocab, merges, merge_ids, special_tokens, fingerprint = io.load_folder(directory)
        tokenizer = cls._from_parts(vocab, merges, special_tokens, merge_ids)
        tokenizer._fingerprint = fingerprint  # a saved vocab already holds the specials: nothing changed
        return tokenizer

    @classmethod
    def _from_parts(cls, vocab: io.Vocab, merges: io.Merges, special_tokens: list[str],
                    merge_ids: np.ndarray) -> Tokenizer:
        """A tokenizer around already-checked parts and their merge ids (no copies, no id lookups again)."""
        tokenizer = cls.__new__(cls)
        tokenizer._setup(vocab, merges, special_tokens, merge_ids)
        return tokenizer

    def with_special_tokens(self, special_tokens: list[str]) -> Tokenizer:
        """A copy that also registers `special_tokens`; those it lacks get the next ids, in the order given,
        so every id this tokenizer gives stays the same (a trained model keeps its rows)."""
        added = [token for token in dict.fromkeys(special_tokens) if token not in self._special_ids]
        return Tokenizer._from_parts(dict(self.vocab), self.merges, self.special_tokens + added, self._merge_ids)

    def save(self, directory: str | Path) -> None:
        """Write this tokenizer to `directory` (each file atomically); `load` reads it back."""
        io.save_folder(directory, self.vocab, self.merges, self.special_tokens)

    def to_tiktoken(self, name: str = "gpt25"):
        """A `tiktoken.Encoding` giving the same ids (ranks are ids, which follow merge order)."""
        return io.tiktoken_encoding(self.vocab, self._special_ids, name)

    def save_huggingface(self, path: str | Path) -> Path:
        """Write a Hugging Face `tokenizer.json` (to `path`, or into it when it is a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        content = io.huggingface_json(self.vocab, self.merges, self._special_ids)
        write_text_atomic(path, json.dumps(content, ensure_ascii=False, indent=1))
        return path

    # ---- properties --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def encoder_kind(self) -> str:
        """Which encoder runs: the C extension, or pure Python (no C compiler at install, or GPT25_PURE_PYTHON=1)."""
        if isinstance(self._encoder, PythonEncoder):
            return "pure Python (the C extension gpt25.tokenizer._pretokens is not built or GPT25_PURE_PYTHON is set)"
        return "C extension (gpt25.tokenizer._pretokens)"

    def token_id(self, special: str) -> int:
        """The id of a registered special token."""
        if special not in self._special_ids:
            raise ValueError(f"special token {special!r} is not registered (registered: {self.special_tokens})")
        return self._special_ids[special]

    @property
    def eot_id(self) -> int:
        """The id of '<|endoftext|>' (ValueError if it is not a registered special token)."""
        return self.token_id(END_OF_TEXT)

    def fingerprint(self) -> str:
        """sha256 hex of vocab + merges + special tokens: equal fingerprints mean equal encodings."""
        if self._fingerprint is None:
            self._fingerprint = io.compute_fingerprint(self.vocab, self.merges, self.special_tokens)
        return self._fingerprint

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={self.special_tokens})"

    # ---- encoding ----------------------------------------------------------------------------

    def _ids(self, parts: list[str | int]) -> np.ndarray:
        """The ids (int32) of parts: text without special tokens (str) and token ids (int)."""
        if len(self._encoder) > CACHE_LIMIT:
            self._encoder.clear()
        return np.frombuffer(self._encoder.encode(parts), dtype=np.int32)

    def _part_lists(
        self, texts: Iterable[str], separator: str | None = None, specials_in_text: bool = True
    ) -> Iterator[list[str | int]]:
        """The texts as the encoder's parts, about ENCODE_CHUNK_CHARS of text at a time: text between special
        tokens (str) and special token ids (int), with `separator`'s id after each text when one is given."""
        special_regex = self._special_regex if specials_in_text else None
        separator_ids = [] if separator is None else [self._special_ids[separator]]
        for group in text_groups(texts, ENCODE_CHUNK_CHARS):
            # one search per group, not per text: most groups hold no special token at all
            has_specials = special_regex is not None and special_regex.search("".join(group)) is not None
            if not has_specials and max(map(len, group)) <= ENCODE_CHUNK_CHARS:  # the common case: no loop per text
                if separator_ids:
                    parts = separator_ids * (2 * len(group))
                    parts[::2] = group
                    group = parts
                yield group
                continue
            parts, num_chars = [], 0
            for text in group:
                for index, piece in enumerate(split_on_specials(text, special_regex if has_specials else None)):
                    if index % 2:
                        parts.append(self._special_ids[piece])
                        continue
                    for chunk in split_at_safe_cuts(piece, ENCODE_CHUNK_CHARS):
                        parts.append(chunk)
                        num_chars += len(chunk)
                        if num_chars >= ENCODE_CHUNK_CHARS:
                            yield parts
                            parts, num_chars = [], 0
                parts += separator_ids
            if parts:
                yield parts

    def _ids_array(
        self, texts: Iterable[str], separator: str | None = None, specials_in_text: bool = True
    ) -> np.ndarray:
        """The ids of `texts` (int32), each followed by the special token `separator` when one is given."""
        pieces = [self._ids(parts) for parts in self._part_lists(texts, separator, specials_in_text)]
        if len(pieces) == 1:
            return pieces[0]  # a short text: no copy
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)

    def encode(self, text: str) -> list[int]:
        """Encode `text`; registered special tokens in it become their own ids."""
        return self._ids_array((text,)).tolist()

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` with special tokens written in it treated as ordinary text (tiktoken's encode_ordinary)."""
        return self._ids_array((text,), specials_in_text=False).tolist()

    def encode_documents(
        self, texts: Iterable[str], dtype: np.dtype | type = np.uint32, *, specials_in_text: bool = True
    ) -> np.ndarray:
        """encode(text) + [eot_id] for every text, concatenated into one array of `dtype`. With specials_in_text=False
        special tokens written in a text are ordinary text (encode_ordinary), so the only <|endoftext|> ids are
        the separators: training data has no fake document boundaries."""
        self.token_id(END_OF_TEXT)  # ValueError when it is not registered
        return self._ids_array(texts, END_OF_TEXT, specials_in_text).astype(dtype, copy=False)

    def _safe_cut(self, text: str, min_index: int = 0) -> int:
        """The last index >= min_index where text can be cut without changing its encoding, or -1."""
        reserve = max(self._max_special_chars - 1, 0)  # a special token may be arriving in pieces
        cut = last_safe_cut(text[: len(text) - reserve] if reserve else text, min_index)
        if cut > 0 and self._special_regex is not None:
            window_start = max(cut - self._max_special_chars, 0)
            for match in self._special_regex.finditer(text, window_start, cut + self._max_special_chars):
                if match.start() < cut < match.end():
                    cut = match.start()
                    break
        return cut if cut > 0 else -1

    def _safe_text_chunks(self, texts: Iterable[str], min_chars: int) -> Iterator[str]:
        """Regroup `texts` into chunks of >= min_chars that encode independently."""
        pending: list[str] = []
        pending_chars = 0
        searched_chars = 0  # text without a cut in it is not searched again (whitespace-free input)
        for text in texts:
            pending.append(text)
            pending_chars += len(text)
            if pending_chars < min_chars:
                continue
            joined = "".join(pending)
            cut = self._safe_cut(joined, max(searched_chars - self._max_special_chars, 0))
            if cut < 0:
                pending = [joined]
                searched_chars = len(joined)
                continue
            searched_chars = 0
            yield joined[:cut]
            pending = [joined[cut:]]
            pending_chars = len(pending[0])
        if pending_chars:
            yield "".join(pending)

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. a file's lines) exactly as if it were one string, in bounded
        memory: text is buffered only up to the next point where its encoding cannot depend on what follows."""
        for chunk in self._safe_text_chunks(texts, STREAM_CHUNK_CHARS):
            yield from self.encode(chunk)

    def encode_many(self, texts: list[str], num_workers: int = 1) -> list[list[int]]:
        """Encode each text; with num_workers > 1 the texts are shared out to a process pool."""
        if num_workers <= 1 or len(texts) < 2:
            return _encode_texts(self, texts)
        size = max(1, len(texts) // (num_workers * 8))  # texts per task: fewer, larger messages between processes
        batches = (texts[start : start + size] for start in range(0, len(texts), size))
        return [ids for _, encoded in map_in_order(_encode_texts, batches, num_workers, self) for ids in encoded]

    def encode_file(self, path: str | Path, num_workers: int = 1) -> Iterator[np.ndarray]:
        """Encode a UTF-8 text file of any size as one string would be; yields the ids in order as uint32 arrays."""
        chunks = plan_chunks(Path(path), FILE_CHUNK_BYTES, [], SAFE_BYTE_CUT)  # byte ranges no pre-token spans
        # a special token with whitespace in it may span a planned cut: then the text is cut again, after decoding
        recut = any(character.isspace() for special in self.special_tokens for character in special)
        function, tasks = ((_encode_text, self._safe_text_chunks(map(read_chunk, chunks), FILE_CHUNK_BYTES)) if recut
                           else (_encode_chunk, iter(chunks)))  # without a recut the workers read the byte ranges
        yield from (ids for _, ids in map_in_order(function, tasks, max(1, num_workers), self))

    # ---- decoding ----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (ValueError for an id outside 0..vocab_size-1)."""
        ids = list(ids)
        try:
            return b"".join(map(self.vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(token_id for token_id in ids if not (isinstance(token_id, Integral) and token_id in self.vocab))
            raise ValueError(
                f"token id {bad} is out of range: this tokenizer has ids 0..{self.vocab_size - 1}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def text_groups(texts: Iterable[str], min_chars: int) -> Iterator[list[str]]:
    """Consecutive texts, gathered until a group holds min_chars characters (the last may hold fewer)."""
    group: list[str] = []
    num_chars = 0
    for text in texts:
        group.append(text)
        num_chars += len(text)
        if num_chars >= min_chars:
            yield group
            group, num_chars = [], 0
    if group:
        yield group


def _encode_texts(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer.encode(text) for text in texts]


def _encode_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    return tokenizer._ids_array((text,)).astype(np.uint32)


def _encode_chunk(tokenizer: Tokenizer, chunk: Chunk) -> np.ndarray:
    return _encode_text(tokenizer, read_chunk(chunk))
