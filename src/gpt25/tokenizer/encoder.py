"""Encoders: text parts -> token ids, caching the ids of every pre-token met.

`new_encoder` gives the C encoder (`gpt25.tokenizer._pretokens.PretokenTable` made with the merges:
pre-tokenizing, the cache lookup and the merging of new pre-tokens all happen in one C pass) when the
extension is built, else `PythonEncoder`. Both have the same methods:
- `encode(parts)`: the int32 ids (as a buffer) of a list of parts: a str part is text without
  special tokens, an int part is a token id passed through (special tokens, document separators);
- `len(encoder)`: the distinct pre-tokens cached; `clear()` empties the cache.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from gpt25.tokenizer.bpe import BatchMerger, merge_values, merge_word
from gpt25.tokenizer.table import (
    C_PRETOKEN_TABLE,
    PythonPretokenTable,
    character_classes,
    use_c_extension,
)

BATCH_MIN_PRETOKENS = 64  # fewer new pre-tokens than this are merged one by one in Python


def new_encoder(merge_ids: np.ndarray, byte_ids: list[int], special_ids: list[int]):
    """The C encoder when the extension is built (and GPT25_PURE_PYTHON is not set), else the Python one.

    merge_ids: (merges, 3) left, right and merged id of each merge in rank order; byte_ids: the id of
    each byte; special_ids: the ids that int parts may carry (the Python encoder gives each a cache slot).
    """
    if not use_c_extension():
        return PythonEncoder(merge_values(merge_ids), byte_ids, special_ids)
    ranks = np.arange(len(merge_ids))
    merges = np.stack([merge_ids[:, 0], merge_ids[:, 1], ranks, merge_ids[:, 2]], axis=1)  # (merges, 4)
    return C_PRETOKEN_TABLE(
        character_classes(), merges=merges.astype(np.int32).tobytes(), byte_ids=np.array(byte_ids, dtype=np.int32).tobytes()
    )


class PythonEncoder:
    """The pure-Python encoder: a PythonPretokenTable gives each pre-token a slot, and numpy arrays
    hold the ids of every slot (slot s: `ids[starts[s] : starts[s] + lengths[s]]`). The new
    pre-tokens of a call are merged together at its end, with numpy when there are many."""

    def __init__(self, merge_values: dict[int, int], byte_ids: list[int], special_ids: list[int]) -> None:
        self.merge_values, self.byte_ids, self.special_ids = merge_values, byte_ids, list(special_ids)
        self.table = PythonPretokenTable()
        self.batch_merger: BatchMerger | None = None
        self.clear()

    def __len__(self) -> int:
        return len(self.table)

    def clear(self) -> None:
        """Forget every pre-token; each special id keeps a slot of its own."""
        self.table.clear()
        self.num_slots = 0
        self.starts = np.zeros(0, dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=np.int32)
        self.num_ids = 0
        self.slot_of_id = {token_id: self.table.slot(f"<special {token_id}>") for token_id in self.special_ids}
        self.table.take_pending()
        self._store_tuples([(token_id,) for token_id in self.slot_of_id])

    def encode(self, parts: list[str | int]) -> np.ndarray:
        slot_of_id = self.slot_of_id
        parts = [slot_of_id[part] if part.__class__ is int else part for part in parts]
        try:
            with _garbage_collection_paused():
                slots = self.table.scan(parts)
                pending = self.table.take_pending()
                if pending:
                    self._store_new(pending)
        except BaseException:
            self.clear()  # no slot without ids may outlive a failed merge
            raise
        return self._ids_of(slots)

    def encode_pretoken(self, pretoken: str) -> tuple[int, ...]:
        return merge_word([self.byte_ids[byte] for byte in pretoken.encode("utf-8")], self.merge_values)

    def _store_new(self, pending: list[str]) -> None:
        """Store the ids of the pre-tokens new to the table, in slot order."""
        if len(pending) >= BATCH_MIN_PRETOKENS:
            if self.batch_merger is None:
                self.batch_merger = BatchMerger(self.merge_values, self.byte_ids)
            self._store(*self.batch_merger.merge([pretoken.encode("utf-8") for pretoken in pending]))
        else:
            self._store_tuples(list(map(self.encode_pretoken, pending)))

    def _store_tuples(self, encoded: list[tuple[int, ...]]) -> None:
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self._store(lengths, np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64))

    def _store(self, lengths: np.ndarray, ids: np.ndarray) -> None:
        """Store the ids of the next slots, in order: lengths[i] each, concatenated in `ids`."""
        first_slot, end_slot = self.num_slots, self.num_slots + len(lengths)
        self.starts = _grown(self.starts, end_slot)
        self.lengths = _grown(self.lengths, end_slot)
        self.ids = _grown(self.ids, self.num_ids + len(ids))
        self.starts[first_slot:end_slot] = self.num_ids + np.cumsum(lengths) - lengths
        self.lengths[first_slot:end_slot] = lengths
        self.ids[self.num_ids : self.num_ids + len(ids)] = ids
        self.num_ids += len(ids)
        self.num_slots = end_slot

    def _ids_of(self, slots: np.ndarray) -> np.ndarray:
        """The ids of `slots`, concatenated (int32)."""
        lengths = self.lengths[slots]  # (units,)
        ends = np.cumsum(lengths)  # (units,) end of each unit's ids in the result
        store_minus_result = np.repeat(self.starts[slots] - (ends - lengths), lengths)  # (ids,)
        return self.ids[store_minus_result + np.arange(ends[-1] if ends.size else 0)]


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """`array` if it holds `size` items, else a copy with room for at least twice as many."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Pause the cyclic GC: merging allocates lists and tuples, and each young-generation pass
    would walk the whole (young, huge) list of pre-tokens again; this code makes no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

