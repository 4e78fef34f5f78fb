"""Pre-token tables and encoders: the C extension's `PretokenTable` where it is built (its methods are listed in
_pretokens.c), else `PythonPretokenTable` and `PythonEncoder` with the same methods. Training counts with a table.

Manual: docs/tokenizer.md ("How it is fast")
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import regex

from gpt25.tokenizer.bpe import merge_values, merge_word
from gpt25.tokenizer.pretokenize import GPT2_REGEX

try:
    from gpt25.tokenizer._pretokens import PretokenTable as C_PRETOKEN_TABLE
except ImportError:  # no C compiler when the package was installed
    C_PRETOKEN_TABLE = None

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
NUM_CODE_POINTS = 0x110000


@functools.cache
def character_classes() -> bytes:
    """One byte per code point: LETTER for regex's \\p{L}, NUMBER for \\p{N}, SPACE for \\s, else OTHER."""
    every_character = np.arange(NUM_CODE_POINTS, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    classes = np.full(NUM_CODE_POINTS, OTHER, dtype=np.uint8)
    for value, pattern in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for match in regex.finditer(pattern, every_character):
            classes[match.start() : match.end()] = value
    return classes.tobytes()


def pure_python_requested() -> bool:
    """Whether GPT25_PURE_PYTHON=1 turns the C extensions off."""
    return os.environ.get("GPT25_PURE_PYTHON", "") not in ("", "0")


def use_c_extension() -> bool:
    return C_PRETOKEN_TABLE is not None and not pure_python_requested()


def new_pretoken_table() -> PythonPretokenTable:
    return C_PRETOKEN_TABLE(character_classes()) if use_c_extension() else PythonPretokenTable()


def new_encoder(merge_ids: np.ndarray, byte_ids: list[int], special_ids: list[int]):
    """merge_ids: (merges, 3) left, right and merged id of each merge in rank order; byte_ids: the id of
    each byte; special_ids: the ids that int parts may carry (the Python encoder gives each a cache slot)."""
    if not use_c_extension():
        return PythonEncoder(merge_values(merge_ids), byte_ids, special_ids)
    merges = np.insert(merge_ids, 2, np.arange(len(merge_ids)), axis=1)  # (merges, 4): left, right, rank, merged
    return C_PRETOKEN_TABLE(
        character_classes(), merges=merges.astype(np.int32).tobytes(), byte_ids=np.array(byte_ids, dtype=np.int32).tobytes()
    )


class PythonPretokenTable(dict):
    """GPT2_REGEX, then a dict lookup per pre-token."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []

    def __missing__(self, unit: str | int) -> int:
        if unit.__class__ is int:  # a slot passed through (no int is ever a key)
            return unit
        slot = self[unit] = len(self)
        self._pending.append(unit)
        return slot

    def slot(self, unit: str) -> int:
        return self[unit]

    def scan(self, parts: list[str | int]) -> np.ndarray:
        units: list[str | int] = []
        for part in parts:
            if part.__class__ is int:
                units.append(part)
            else:
                units += GPT2_REGEX.findall(part)
        return np.fromiter(map(self.__getitem__, units), dtype=np.int32, count=len(units))

    def take_pending(self) -> list[str]:
        pending, self._pending = self._pending, []
        return pending

    def clear(self) -> None:
        super().clear()
        self._pending = []


class PythonEncoder:
    """A PythonPretokenTable gives each pre-token a slot, and numpy arrays hold the ids of every slot
    (slot s: `ids[starts[s] : starts[s] + lengths[s]]`), so turning slots into ids is one numpy gather,
    with no Python object per token. The new pre-tokens of a call are merged at its end."""

    def __init__(self, merge_values: dict[int, int], byte_ids: list[int], special_ids: list[int]) -> None:
        self.merge_values, self.byte_ids, self.special_ids = merge_values, byte_ids, list(special_ids)
        self.table = PythonPretokenTable()
        self.clear()

    def __len__(self) -> int:
        return len(self.table)

    def clear(self) -> None:
        """Forget every pre-token; each special id keeps a slot of its own."""
        self.table.clear()
        self.starts = np.zeros(0, dtype=np.int64)
        self.lengths = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=np.int32)
        self.num_ids = 0
        self.slot_of_id = {token_id: self.table.slot(f"<special {token_id}>") for token_id in self.special_ids}
        self.table.take_pending()
        self._store([(token_id,) for token_id in self.slot_of_id])

    def encode(self, parts: list[str | int]) -> np.ndarray:
        slot_of_id = self.slot_of_id
        parts = [slot_of_id[part] if part.__class__ is int else part for part in parts]
        try:
            with _garbage_collection_paused():
                slots = self.table.scan(parts)
                pending = self.table.take_pending()
                self._store(list(map(self.encode_pretoken, pending)))
        except BaseException:
            self.clear()  # no slot without ids may outlive a failed merge
            raise
        return self._ids_of(slots)

    def encode_pretoken(self, pretoken: str) -> tuple[int, ...]:
        return merge_word([self.byte_ids[byte] for byte in pretoken.encode("utf-8")], self.merge_values)

    def _store(self, encoded: list[tuple[int, ...]]) -> None:
        """Store the ids of the table's last len(encoded) slots (those just taken as pending), in order."""
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64)
        first_slot, end_slot = len(self.table) - len(lengths), len(self.table)
        self.starts = _grown(self.starts, end_slot)
        self.lengths = _grown(self.lengths, end_slot)
        self.ids = _grown(self.ids, self.num_ids + len(ids))
        self.starts[first_slot:end_slot] = self.num_ids + np.cumsum(lengths) - lengths
        self.lengths[first_slot:end_slot] = lengths
        self.ids[self.num_ids : self.num_ids + len(ids)] = ids
        self.num_ids += len(ids)

    def _ids_of(self, slots: np.ndarray) -> np.ndarray:
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
