"""Pre-tokenization: special-token splitting, safe cuts, file reading."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.tokenizer.pretokenize import (
    GPT2_REGEX,
    last_safe_cut,
    special_token_regex,
    split_on_specials,
)

# characters where safe cuts could plausibly go wrong
TRICKY = list(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u202f\u3000\ufeff'sdmtlvre") + [
    "a", "Z", "é", "ß", "Ω", "ж", "東", "한", "0", "٣", "½", "²", "Ⅻ", "🤖", "\u0301", "—", "’", ".", "'s", "'ll", " 've",
]


def test_split_on_specials_longest_first():
    regex = special_token_regex(["<a>", "<a><a>"])
    assert split_on_specials("x<a><a><a>y", regex) == ["x", "<a><a>", "", "<a>", "y"]
    assert split_on_specials("plain", None) == ["plain"]
    assert special_token_regex([]) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TRICKY), max_size=25), st.integers(0, 30))
def test_last_safe_cut_does_not_change_pretokens(pieces, min_index):
    text = "".join(pieces)
    cut = last_safe_cut(text, min_index)
    if cut < 0:
        return
    assert cut >= max(min_index, 1)
    assert GPT2_REGEX.findall(text[:cut]) + GPT2_REGEX.findall(text[cut:]) == GPT2_REGEX.findall(text)
