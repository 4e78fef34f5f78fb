"""Pre-token tables: the C table and the pure-Python one both pre-tokenize exactly as GPT-2's regex
and number pre-tokens in order of first appearance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.tokenizer import encoder
from gpt25.tokenizer.encoder import NUM_CODE_POINTS, PythonPretokenTable, character_classes, new_pretoken_table
from gpt25.tokenizer.pretokenize import GPT2_REGEX

TRICKY = list(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u202f\u3000\ufeff'sdmtlvre") + [
    "a", "Z", "é", "ß", "Ω", "ж", "東", "한", "0", "٣", "½", "²", "Ⅻ", "🤖", "\u0301", "—", "’", ".", "'s", "'ll",
    " 've", "\ud800", "\U0010ffff", "'S", "''", " '",
]


def c_table():
    if encoder.C_PRETOKEN_TABLE is None:
        pytest.skip("the C extension gpt25.tokenizer._pretokens is not built (no C compiler at install time)")
    return encoder.C_PRETOKEN_TABLE(character_classes())


TABLES = {"c": c_table, "python": PythonPretokenTable}


def pretokens_of(table, text: str) -> list[str]:
    """The pre-tokens a fresh table saw in text: its slots turned back into the pending strings."""
    slots = np.frombuffer(table.scan([text]), dtype=np.int32).tolist()
    new = table.take_pending()
    assert len(table) == len(new)
    return [new[slot] for slot in slots]


@pytest.mark.parametrize("kind", TABLES)
@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=5)), max_size=30))
def test_scan_equals_gpt2_regex(kind, pieces):
    text = "".join(pieces)
    assert pretokens_of(TABLES[kind](), text) == GPT2_REGEX.findall(text)


def test_every_code_point_after_a_letter_and_after_a_space():
    """The C table's character classes, checked on all of Unicode (the matcher itself on TRICKY above)."""
    every = np.arange(NUM_CODE_POINTS, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    text = "".join(f"{c}a {c}" for c in every)
    assert pretokens_of(c_table(), text) == GPT2_REGEX.findall(text)


@pytest.mark.parametrize("kind", TABLES)
def test_slots_number_pretokens_by_first_appearance(kind):
    table = TABLES[kind]()
    assert table.slot("<|endoftext|>") == 0 and table.take_pending() == ["<|endoftext|>"]
    slots = np.frombuffer(table.scan(["a b a", 0, " b  c", 0]), dtype=np.int32).tolist()
    assert slots == [1, 2, 3, 0, 2, 4, 5, 0]
    assert table.take_pending() == ["a", " b", " a", " ", " c"]
    assert len(table) == 6 and table.slot(" a") == 3 and table.take_pending() == []
    table.clear()
    assert len(table) == 0 and np.frombuffer(table.scan(["x"]), dtype=np.int32).tolist() == [0]


@pytest.mark.parametrize("kind", TABLES)
def test_many_distinct_pretokens_survive_growth(kind):
    table = TABLES[kind]()
    words = [f" w{index}x" for index in range(50_000)]  # " w", "12", "x": letters and digits alternate
    text = "".join(words)
    first = np.frombuffer(table.scan([text]), dtype=np.int32).copy()
    pending = table.take_pending()
    again = np.frombuffer(table.scan([text, text]), dtype=np.int32)
    assert table.take_pending() == [] and np.array_equal(again, np.concatenate([first, first]))
    assert [pending[slot] for slot in first.tolist()] == GPT2_REGEX.findall(text)


def test_c_table_rejects_bad_input():
    table = c_table()
    with pytest.raises(TypeError, match="list of str and int"):
        table.scan(("a",))
    with pytest.raises(TypeError, match="must be str or int, not bytes"):
        table.scan([b"a"])
    with pytest.raises(ValueError, match="slot 7 is not in the table"):
        table.scan([7])
    with pytest.raises(ValueError, match="one byte per code point"):
        encoder.C_PRETOKEN_TABLE(b"\x00" * 10)


def test_pure_python_is_chosen_by_environment(monkeypatch):
    monkeypatch.setenv("GPT25_PURE_PYTHON", "1")
    assert isinstance(new_pretoken_table(), PythonPretokenTable)
    monkeypatch.setenv("GPT25_PURE_PYTHON", "0")
    expected = PythonPretokenTable if encoder.C_PRETOKEN_TABLE is None else encoder.C_PRETOKEN_TABLE
    assert type(new_pretoken_table()) is expected


def test_character_classes_follow_regex():
    classes = character_classes()
    assert [classes[ord(c)] for c in "a 1.\u00a0\u2028Ⅻ東\U00010400\ud800"] == [1, 3, 2, 0, 3, 3, 2, 1, 1, 0]
