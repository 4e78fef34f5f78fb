"""The Tokenizer: byte-level BPE encoding and decoding with GPT-2's pre-tokenizer.

Encoding cuts the text at special tokens (longest first), splits each piece with GPT-2's regex,
and turns every pre-token into ids by applying merges in rank order, as GPT-2 does (gpt25.tokenizer.bpe).
Results are cached per pre-token string, which is what makes pure Python fast: 25 MB of English
has only about 100k distinct pre-tokens, so most of the work is one dict lookup per pre-token (to
its slot in the cache), the slots become ids with numpy, and the new pre-tokens of each piece of
text are merged together, with numpy when there are many.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from numbers import Integral
from pathlib import Path

import numpy as np

from gpt25.tokenizer import io
from gpt25.tokenizer.bpe import ID_BITS, ID_MASK, BatchMerger, merge_word
from gpt25.tokenizer.pretokenize import (
    decode_utf8,
    iter_byte_pieces,
    iter_text_blocks,
    last_safe_cut,
    only_fast_characters,
    pretokenize,
    special_token_regex,
    split_at_safe_cuts,
    split_on_specials,
)

END_OF_TEXT = "<|endoftext|>"
CACHE_LIMIT = 1_000_000  # distinct pre-tokens kept; the cache is dropped when it grows past this
STREAM_CHUNK_CHARS = 1 << 16  # encode_iterable gathers at least this much text per encode() call
ENCODE_CHUNK_CHARS = 1 << 20  # encode() pre-tokenizes longer texts in pieces of about this size
FILE_CHUNK_BYTES = 1 << 20  # a pool worker's task when encoding a file: about this many bytes (or characters)
BATCH_MIN_PRETOKENS = 64  # fewer new pre-tokens than this are merged one by one in Python
SHORT_TEXT_CHARS = 1024  # encode() turns cache slots into ids in pure Python up to this length


class _PretokenCache(dict):
    """pre-token string -> slot number. The ids of the slots are held twice, each copy a prefix of
    the filled slots that is brought up to date from the other when it is needed:
    - numpy, for long texts: slot s holds `ids[starts[s] : starts[s] + lengths[s]]`;
    - Python, for short texts, where numpy's fixed costs dominate: `python_ids[s]`, an int or a tuple.

    A lookup that misses gives the pre-token the next slot and records it in `pending`; `fill` (numpy
    results) or `fill_python` (a tuple each) then stores the ids of all pending pre-tokens at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def __missing__(self, pretoken: str) -> int:
        slot = self[pretoken] = len(self)
        self.pending.append(pretoken)
        return slot

    def reset(self) -> None:
        self.clear()
        self.pending: list[str] = []
        self.numpy_slots = 0  # slots held by the numpy copy
        self.starts = np.zeros(0, dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=np.int32)
        self.num_ids = 0
        self.python_ids: list[int | tuple[int, ...]] = []

    def fill(self, lengths: np.ndarray, ids: np.ndarray) -> None:
        """Store the ids of the pending pre-tokens, in order: lengths[i] each, concatenated in `ids`."""
        self._sync_numpy()
        self._append_numpy(lengths, ids)
        self.pending = []

    def fill_python(self, encoded: list[tuple[int, ...]]) -> None:
        """Store the ids of the pending pre-tokens, in order: a tuple each (into the numpy copy when
        only that one is up to date: long texts never need the Python copy)."""
        if len(self.python_ids) < self.numpy_slots:
            self._append_numpy_tuples(encoded)
        else:
            self.python_ids += [ids[0] if len(ids) == 1 else ids for ids in encoded]
        self.pending = []

    def ids_of(self, slots: np.ndarray) -> np.ndarray:
        """The ids of `slots`, concatenated (int32)."""
        self._sync_numpy()
        lengths = self.lengths[slots]  # (units,)
        ends = np.cumsum(lengths)  # (units,) end of each unit's ids in the result
        store_minus_result = np.repeat(self.starts[slots] - (ends - lengths), lengths)  # (ids,)
        return self.ids[store_minus_result + np.arange(ends[-1] if ends.size else 0)]

    def python_ids_of(self, slots: list[int]) -> list[int]:
        """The ids of `slots`, concatenated, in pure Python."""
        self._sync_python()
        ids: list[int] = []
        for entry in map(self.python_ids.__getitem__, slots):
            if entry.__class__ is int:
                ids.append(entry)
            else:
                ids += entry
        return ids

    def _append_numpy(self, lengths: np.ndarray, ids: np.ndarray) -> None:
        first_slot, end_slot = self.numpy_slots, self.numpy_slots + len(lengths)
        self.starts = _grown(self.starts, end_slot)
        self.lengths = _grown(self.lengths, end_slot)
        self.ids = _grown(self.ids, self.num_ids + len(ids))
        self.starts[first_slot:end_slot] = self.num_ids + np.cumsum(lengths) - lengths
        self.lengths[first_slot:end_slot] = lengths
        self.ids[self.num_ids : self.num_ids + len(ids)] = ids
        self.num_ids += len(ids)
        self.numpy_slots = end_slot

    def _append_numpy_tuples(self, encoded: list[tuple[int, ...]]) -> None:
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self._append_numpy(lengths, np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64))

    def _sync_numpy(self) -> None:
        """Copy the slots only the Python copy holds into the numpy one."""
        entries = self.python_ids[self.numpy_slots :]
        if entries:
            self._append_numpy_tuples([(entry,) if entry.__class__ is int else entry for entry in entries])

    def _sync_python(self) -> None:
        """Copy the slots only the numpy copy holds into the Python one (their ids lie end to end)."""
        first_slot = len(self.python_ids)
        if first_slot < self.numpy_slots:
            flat = self.ids[self.starts[first_slot] : self.num_ids].tolist()
            ends = np.cumsum(self.lengths[first_slot : self.numpy_slots]).tolist()
            self.python_ids += [
                flat[end - 1] if end - start == 1 else tuple(flat[start:end]) for start, end in zip([0, *ends], ends)
            ]


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """`array` if it holds `size` items, else a copy with room for at least twice as many."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


class Tokenizer:
    """Byte-level BPE tokenizer: `vocab` maps ids 0..N-1 to bytes, `merges` are in rank order.

    Special tokens not already in `vocab` get the next free ids, in the order given.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
    ) -> None:
        self.vocab: dict[int, bytes] = {int(token_id): bytes(token) for token_id, token in vocab.items()}
        self.merges: list[tuple[bytes, bytes]] = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens: list[str] = list(dict.fromkeys(special_tokens or []))
        self._token_to_id = self._build_token_index()
        self._special_ids = {token: self._token_to_id[token.encode("utf-8")] for token in self.special_tokens}
        self._byte_ids = self._build_byte_ids()
        self._merge_values = self._build_merge_values()
        self._special_regex = special_token_regex(self.special_tokens)
        self._max_special_chars = max((len(token) for token in self.special_tokens), default=0)
        self._cache = _PretokenCache()
        self._clear_cache()
        self._batch_merger: BatchMerger | None = None
        self._fingerprint: str | None = None

    def _build_token_index(self) -> dict[bytes, int]:
        token_to_id: dict[bytes, int] = {}
        for token_id in sorted(self.vocab):
            token_to_id.setdefault(self.vocab[token_id], token_id)
        for special in self.special_tokens:
            encoded = special.encode("utf-8")
            if encoded not in token_to_id:
                token_to_id[encoded] = len(self.vocab)
                self.vocab[len(self.vocab)] = encoded
        if sorted(self.vocab) != list(range(len(self.vocab))):
            raise ValueError(f"vocab ids must be 0..{len(self.vocab) - 1} with no gaps")
        return token_to_id

    def _build_byte_ids(self) -> list[int]:
        missing = [byte for byte in range(256) if bytes([byte]) not in self._token_to_id]
        if missing:
            raise ValueError(f"vocab lacks {len(missing)} single-byte tokens (first: byte {missing[0]}); "
                             "a byte-level BPE vocab needs all 256")
        return [self._token_to_id[bytes([byte])] for byte in range(256)]

    def _build_merge_values(self) -> dict[int, int]:
        """left id << ID_BITS | right id -> rank << ID_BITS | merged id (ints: cheaper than tuples)."""
        if len(self.vocab) > ID_MASK:
            raise ValueError(f"vocab too large: at most {ID_MASK} tokens are supported")
        if not self.merges:
            return {}
        lefts, rights = zip(*self.merges)
        id_lists = [list(map(self._token_to_id.get, tokens)) for tokens in (lefts, rights, map(bytes.__add__, lefts, rights))]
        if any(None in ids for ids in id_lists):
            rank = min(ids.index(None) for ids in id_lists if None in ids)
            left, right = self.merges[rank]
            raise ValueError(f"merge {rank} ({left!r}, {right!r}) uses or makes a token missing from the vocab")
        left_ids, right_ids, merged_ids = (np.array(ids, dtype=np.int64) for ids in id_lists)
        keys = left_ids << ID_BITS | right_ids
        values = np.arange(len(self.merges), dtype=np.int64) << ID_BITS | merged_ids
        return dict(zip(keys[::-1].tolist(), values[::-1].tolist()))  # reversed: a pair's first merge wins

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_batch_merger"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = _PretokenCache()
        self._clear_cache()

    def _clear_cache(self) -> None:
        """Empty the cache but for the special tokens, which map to their ids."""
        self._cache.reset()
        for special in self._special_ids:
            self._cache.__missing__(special)  # gives the special a slot, pending until the fill below
        self._cache.fill_python([(token_id,) for token_id in self._special_ids.values()])

    # ---- construction from files -------------------------------------------------------------

    @classmethod
    def from_files(
        cls, vocab_path: str | Path, merges_path: str | Path, special_tokens: list[str] | None = None
    ) -> Tokenizer:
        """Build from GPT-2-style `vocab.json` + `merges.txt` (e.g. OpenAI's GPT-2 files)."""
        return cls(io.read_vocab_json(vocab_path), io.read_merges_txt(merges_path), special_tokens)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a folder written by `save` (see gpt25.tokenizer.io for the format)."""
        vocab, merges, special_tokens, fingerprint = io.load_folder(directory)
        tokenizer = cls(vocab, merges, special_tokens)
        tokenizer._fingerprint = fingerprint  # a saved vocab already holds the specials: nothing changed
        return tokenizer

    def save(self, directory: str | Path) -> None:
        """Write this tokenizer to `directory` (each file atomically); `load` reads it back."""
        io.save_folder(directory, self.vocab, self.merges, self.special_tokens)

    def to_tiktoken(self, name: str = "gpt25"):
        """A `tiktoken.Encoding` giving the same ids (ranks are ids, which follow merge order)."""
        return io.tiktoken_encoding(self.vocab, self._special_ids, name)

    def save_huggingface(self, path: str | Path) -> Path:
        """Write a Hugging Face `tokenizer.json` (to `path`, or into it when it is a folder)."""
        import json

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        content = io.huggingface_json(self.vocab, self.merges, self._special_ids)
        io.write_text_atomic(path, json.dumps(content, ensure_ascii=False, indent=1))
        return path

    # ---- properties --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

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

    def _encode_pretoken(self, pretoken: str) -> tuple[int, ...]:
        return merge_word([self._byte_ids[byte] for byte in pretoken.encode("utf-8")], self._merge_values)

    def _fill_pending(self) -> None:
        """Store the ids of the pre-tokens that lookups missed: merged with numpy when there are many."""
        pending = self._cache.pending
        if len(pending) >= BATCH_MIN_PRETOKENS:
            if self._batch_merger is None:
                self._batch_merger = BatchMerger(self._merge_values, self._byte_ids)
            self._cache.fill(*self._batch_merger.merge([pretoken.encode("utf-8") for pretoken in pending]))
        else:
            self._cache.fill_python(list(map(self._encode_pretoken, pending)))

    def _slots(self, units: list[str], as_array: bool = True) -> np.ndarray | list[int]:
        """The cache slots of the units; the new pre-tokens among them are encoded together."""
        if len(self._cache) > CACHE_LIMIT:
            self._clear_cache()
        try:
            slots = map(self._cache.__getitem__, units)
            slots = np.fromiter(slots, dtype=np.int64, count=len(units)) if as_array else list(slots)
            if self._cache.pending:
                self._fill_pending()
        except BaseException:
            self._clear_cache()  # no slot without ids may outlive a failed fill
            raise
        return slots

    def _unit_lists(self, texts: Iterable[str], separator: str | None = None) -> Iterator[list[str]]:
        """The units of about ENCODE_CHUNK_CHARS of text at a time, `separator` after each text.

        Units are the pre-tokens, and each special token whole: the cache maps a special to its id
        (no pre-token can equal a special, since specials are cut out of the text first).
        """
        special_regex = self._special_regex
        units: list[str] = []
        num_chars = 0
        for group in _text_groups(texts, ENCODE_CHUNK_CHARS):
            joined = "".join(group)  # these searches cost about as much per call as per character: once per group
            has_specials = special_regex is not None and special_regex.search(joined) is not None
            fast_characters_only = len(group) > 1 and only_fast_characters(joined)  # a long text is checked piece by piece
            for text in group:
                for piece, is_special in self._text_pieces(text, has_specials):
                    if is_special:
                        units.append(piece)
                        continue
                    units += pretokenize(piece, fast_characters_only)
                    num_chars += len(piece)
                    if num_chars >= ENCODE_CHUNK_CHARS:
                        yield units
                        units, num_chars = [], 0
                if separator is not None:
                    units.append(separator)
        if units:
            yield units

    def _text_pieces(self, text: str, has_specials: bool) -> Iterator[tuple[str, bool]]:
        """(piece, is_special): the special tokens of `text` whole, the text between them in
        pieces of at most about ENCODE_CHUNK_CHARS that pre-tokenize independently."""
        for index, part in enumerate(split_on_specials(text, self._special_regex) if has_specials else [text]):
            if index % 2:
                yield part, True
            elif len(part) > ENCODE_CHUNK_CHARS:
                yield from ((piece, False) for piece in split_at_safe_cuts(part, ENCODE_CHUNK_CHARS))
            else:
                yield part, False

    def _ids_array(self, texts: Iterable[str], separator: str | None = None) -> np.ndarray:
        """The ids of `texts` (int32), each text followed by the special token `separator` when one is given."""
        pieces: list[np.ndarray] = []
        with _garbage_collection_paused():
            for units in self._unit_lists(texts, separator):
                pieces.append(self._cache.ids_of(self._slots(units)))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)

    def encode(self, text: str) -> list[int]:
        """Encode `text`; registered special tokens in it become their own ids."""
        if len(text) > SHORT_TEXT_CHARS:
            return self._ids_array((text,)).tolist()
        units = list(itertools.chain.from_iterable(self._unit_lists((text,))))
        return self._cache.python_ids_of(self._slots(units, as_array=False))

    def encode_documents(self, texts: Iterable[str], dtype: np.dtype | type = np.uint32) -> np.ndarray:
        """encode(text) + [eot_id] for every text, concatenated into one array of `dtype`."""
        self.token_id(END_OF_TEXT)  # ValueError when it is not registered
        return self._ids_array(texts, END_OF_TEXT).astype(dtype, copy=False)

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
        """Lazily encode a stream of strings (e.g. a file's lines) exactly as if it were one string.

        Memory stays bounded: text is buffered only up to the next point where the encoding cannot
        depend on what follows (a non-space followed by a space, outside special tokens).
        """
        for chunk in self._safe_text_chunks(texts, STREAM_CHUNK_CHARS):
            yield from self.encode(chunk)

    def encode_many(self, texts: list[str], num_workers: int = 1) -> list[list[int]]:
        """Encode each text; with num_workers > 1 the texts are shared out to a process pool."""
        if num_workers <= 1 or len(texts) < 2:
            return [self.encode(text) for text in texts]
        chunksize = max(1, len(texts) // (num_workers * 8))
        with _worker_pool(self, num_workers) as pool:
            return [ids.tolist() for ids in pool.imap(_encode_in_worker, texts, chunksize=chunksize)]

    def encode_file(self, path: str | Path, num_workers: int = 1) -> Iterator[np.ndarray]:
        """Encode a UTF-8 text file of any size; yields the ids in order as numpy arrays of uint32.

        The whole file is encoded as one string would be (chunks are cut only at safe points).
        With several workers this process only cuts the raw bytes; the workers decode them.
        """
        if num_workers > 1 and not any(character.isspace() for special in self.special_tokens for character in special):
            with _worker_pool(self, num_workers) as pool:
                pieces = ((str(path), offset, data) for offset, data in iter_byte_pieces(path, FILE_CHUNK_BYTES))
                yield from pool.imap(_encode_bytes_in_worker, pieces)
            return
        chunks = self._safe_text_chunks(iter_text_blocks(path), FILE_CHUNK_BYTES)
        if num_workers <= 1:
            for chunk in chunks:
                yield self._ids_array((chunk,)).astype(np.uint32)
            return
        with _worker_pool(self, num_workers) as pool:
            yield from pool.imap(_encode_in_worker, chunks)

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


def _text_groups(texts: Iterable[str], min_chars: int) -> Iterator[list[str]]:
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


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Pause the cyclic GC: cache misses allocate lists and tuples, and each young-generation pass
    would walk the whole (young, huge) list of pre-tokens again; this code makes no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_WORKER_TOKENIZER: Tokenizer | None = None


def _set_worker_tokenizer(tokenizer: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_in_worker(text: str) -> np.ndarray:
    assert _WORKER_TOKENIZER is not None
    return _WORKER_TOKENIZER._ids_array((text,)).astype(np.uint32)


def _encode_bytes_in_worker(piece: tuple[str, int, bytes]) -> np.ndarray:
    path, offset, data = piece
    return _encode_in_worker(decode_utf8(data, path, offset))


def _worker_pool(tokenizer: Tokenizer, num_workers: int):
    """A process pool whose workers each hold a copy of `tokenizer` (fork where available)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return context.Pool(num_workers, initializer=_set_worker_tokenizer, initargs=(tokenizer,))
