"""Pre-token tables: pre-tokenize texts and map each pre-token to a slot (its number among the distinct
pre-tokens seen so far), telling the caller which pre-tokens are new so it can merge them once.

Two implementations with the same methods:
- `PretokenTable` from the C extension `gpt25.tokenizer._pretokens` (built by `uv sync` / pip where a
  C compiler is present): GPT-2's regex as a hand-written matcher over a code-point class table and
  an open-addressing hash table, one pass over the text, no Python object per known pre-token;
- `PythonPretokenTable`: `pretokenize` and a dict, used when the extension is not built (or when
  GPT25_PURE_PYTHON=1 is set).

Methods: `scan(parts)` (str parts are pre-tokenized, int parts are slots passed through) returns the
slots as int32 in a buffer; `slot(unit)` gives a whole string a slot (special tokens);
`take_pending()` returns the pre-tokens added since the last call in slot order; `clear()`; `len()`.
Training counts pre-tokens with these tables; the C table made with merges is also the C encoder
(gpt25.tokenizer.encoder).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import regex

from gpt25.tokenizer.pretokenize import only_fast_characters, pretokenize

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


class PythonPretokenTable(dict):
    """The pure-Python pre-token table: `pretokenize`, then a dict lookup per pre-token."""

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
        texts = [part for part in parts if part.__class__ is str]
        fast_characters_only = len(texts) > 1 and only_fast_characters("".join(texts))  # one check, not one per text
        for part in parts:
            if part.__class__ is int:
                units.append(part)
            else:
                units += pretokenize(part, fast_characters_only)
        return np.fromiter(map(self.__getitem__, units), dtype=np.int32, count=len(units))

    def take_pending(self) -> list[str]:
        pending, self._pending = self._pending, []
        return pending

    def clear(self) -> None:
        super().clear()
        self._pending = []


def pure_python_requested() -> bool:
    """Whether GPT25_PURE_PYTHON=1 turns the C extensions off."""
    return os.environ.get("GPT25_PURE_PYTHON", "") not in ("", "0")


def use_c_extension() -> bool:
    """Whether the C extension is built and not turned off with GPT25_PURE_PYTHON=1."""
    return C_PRETOKEN_TABLE is not None and not pure_python_requested()


def new_pretoken_table() -> PythonPretokenTable:
    """A C table when use_c_extension(), else the Python one."""
    return C_PRETOKEN_TABLE(character_classes()) if use_c_extension() else PythonPretokenTable()
