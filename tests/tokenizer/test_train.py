"""train_bpe: the reference merges, the exact tie rule (C and Python merge loops), vocab layout,
chunked/parallel counting, errors."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.tokenizer import pretokenize, train, train_bpe
from gpt25.tokenizer.io import printable_to_bytes
from gpt25.tokenizer.pretokenize import (
    GPT2_REGEX,
    special_token_regex,
    split_on_specials,
)

EOT = "<|endoftext|>"


def write(tmp_path: Path, text: str | bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture(params=["C", "Python"])
def merge_loop(request, monkeypatch) -> str:
    """Runs a test with the C merge loop (gpt25.tokenizer._bpe) and again with the pure-Python one."""
    if request.param == "C" and train.c_merge_pairs is None:
        pytest.skip("the C extension gpt25.tokenizer._bpe is not built")
    monkeypatch.setenv("GPT25_PURE_PYTHON", "1" if request.param == "Python" else "0")
    return request.param


def python_merges(word_counts: dict[str, int], vocab_size: int, specials: int = 0) -> list[tuple[bytes, bytes]]:
    return train._BpeMerger(word_counts, base_vocab(specials)).run(vocab_size)


def base_vocab(specials: int = 0) -> dict[int, bytes]:
    vocab = {byte: bytes([byte]) for byte in range(256)}
    vocab |= {256 + index: f"<special{index}>".encode() for index in range(specials)}
    return vocab


@pytest.mark.skipif(train.c_merge_pairs is None, reason="the C extension gpt25.tokenizer._bpe is not built")
@settings(max_examples=300, deadline=None)
@given(
    word_counts=st.dictionaries(st.text(alphabet="aab\xe9 z", min_size=1, max_size=9), st.integers(1, 6), max_size=40),
    extra=st.integers(1, 80),
    specials=st.integers(0, 2),
)
def test_c_merge_loop_gives_the_python_merges(word_counts: dict[str, int], extra: int, specials: int) -> None:
    """Few characters and small counts: many ties, repeated pairs (aaaa), merges of merges."""
    vocab = base_vocab(specials)
    merges = train.merge_words(word_counts, vocab, 256 + specials + extra)
    assert merges == python_merges(word_counts, 256 + specials + extra, specials)
    assert [vocab[256 + specials + index] for index in range(len(merges))] == [a + b for a, b in merges]


def test_c_merge_loop_gives_the_python_merges_on_a_novel(english_dir, capsys) -> None:
    if train.c_merge_pairs is None:
        pytest.skip("the C extension gpt25.tokenizer._bpe is not built")
    word_counts = train.count_pretokens([english_dir / "pg2554_crime_and_punishment.txt"], [EOT], num_workers=1)
    merges = train.merge_words(word_counts, base_vocab(1), 4000, progress=True)  # the C loop reports every 512
    assert len(merges) == 4000 - 257
    assert "3743/3743" in capsys.readouterr().err
    assert merges == python_merges(word_counts, 4000, specials=1)


@pytest.mark.skipif(train.c_merge_pairs is None, reason="the C extension gpt25.tokenizer._bpe is not built")
def test_c_merge_loop_rejects_bad_input_and_passes_errors_on() -> None:
    import numpy as np

    tokens = [bytes([byte]) for byte in range(256)]
    symbols = np.array([97, 98, 97, 98, 99], dtype=np.int32)
    lengths, counts = np.array([2, 3], dtype=np.int64), np.array([5, 1], dtype=np.int64)
    assert train.c_merge_pairs(symbols, lengths, counts, tokens, 258, None) == [(97, 98), (256, 99)]
    with pytest.raises(ValueError, match="do not add up"):
        train.c_merge_pairs(symbols, np.array([2, 2], dtype=np.int64), counts, tokens, 300, None)
    with pytest.raises(ValueError, match="one length"):
        train.c_merge_pairs(symbols, lengths, counts[:1], tokens, 300, None)
    with pytest.raises(ValueError, match="not a token id below 99"):
        train.c_merge_pairs(symbols, lengths, counts, tokens[:99], 300, None)
    with pytest.raises(TypeError, match="list of bytes"):
        train.c_merge_pairs(symbols, lengths, counts, ["a", *tokens[1:]], 300, None)
    with pytest.raises(TypeError, match="callable"):
        train.c_merge_pairs(symbols, lengths, counts, tokens, 300, 5)
    words = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.int32)  # room for thousands of merges

    def interrupt(done: int) -> None:
        raise KeyboardInterrupt(done)

    with pytest.raises(KeyboardInterrupt, match="512"):
        train.c_merge_pairs(words, np.array([len(words)], dtype=np.int64), np.array([1], dtype=np.int64), tokens,
                            5000, interrupt)


@pytest.mark.skipif(train.c_merge_pairs is None, reason="the C extension gpt25.tokenizer._bpe is not built")
def test_c_merge_loop_breaks_ties_of_equal_bytes_by_the_smaller_ids() -> None:
    """Pairs equal in count and in bytes (two tokens can spell the same string): the smaller (left, right)
    ids first, as _BpeMerger's heap entries (count, key, pair) order them."""
    import numpy as np

    tokens = [bytes([byte]) for byte in range(256)] + [b"x", b"x"]  # ids 256 and 257 both spell "x"
    symbols = np.array([257, 97, 256, 97], dtype=np.int32)  # "xa" with each "x": tied in count and bytes
    lengths, counts = np.array([2, 2], dtype=np.int64), np.array([3, 3], dtype=np.int64)
    assert train.c_merge_pairs(symbols, lengths, counts, tokens, 260, None) == [(256, 97), (257, 97)]


def test_reference_merges_and_vocab(fixtures_dir, merge_loop):
    vocab, merges = train_bpe(fixtures_dir / "corpus.en", 500, [EOT])
    lines = (fixtures_dir / "train-bpe-reference-merges.txt").read_text(encoding="utf-8").splitlines()
    expected = [tuple(printable_to_bytes(token, "reference") for token in line.split(" ")) for line in lines]
    assert merges == expected
    reference_vocab = json.loads((fixtures_dir / "train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    assert set(vocab.values()) == {printable_to_bytes(token, "reference") for token in reference_vocab}
    assert sorted(vocab) == list(range(500))


def test_vocab_layout_bytes_then_specials_then_merges(tmp_path, merge_loop):
    path = write(tmp_path, "low lower lowest<|endoftext|>newer wider<pad>")
    vocab, merges = train_bpe(path, 270, [EOT, "<pad>"])
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert vocab[256] == EOT.encode() and vocab[257] == b"<pad>"
    assert [vocab[258 + i] for i in range(len(merges))] == [a + b for a, b in merges]
    assert len(vocab) == 270


def test_ties_go_to_the_greatest_pair(tmp_path, merge_loop):
    # every adjacent pair occurs once: ("c","d") > ("b","c") > ("a","b") as bytes
    _, merges = train_bpe(write(tmp_path, "abcd"), 257, [])
    assert merges == [(b"c", b"d")]
    _, merges = train_bpe(write(tmp_path, "ab abx"), 257, [])
    assert merges == [(b"a", b"b")]  # count 2 beats the greater pairs with count 1
    _, merges = train_bpe(write(tmp_path, "zz y"), 257, [])
    assert merges == [(b"z", b"z")]  # (b"z", b"z") > (b" ", b"y")


def test_tie_rule_compares_bytes_not_ids(tmp_path, merge_loop):
    # after merging "ab" (id 256), both ("ab","c") and ("c","ab") are tied; bytes "c" > "ab"
    path = write(tmp_path, "abc cab abab")
    _, merges = train_bpe(path, 259, [])
    assert merges[0] == (b"a", b"b")
    assert merges[1] == (b"c", b"ab")


def test_specials_split_text_and_are_never_merged(tmp_path, merge_loop):
    path = write(tmp_path, "aa<|endoftext|>aa<|endoftext|>aa")
    vocab, merges = train_bpe(path, 300, [EOT])
    assert merges == [(b"a", b"a")]  # the corpus runs out of pairs: training stops early
    assert all(b"<|" not in a + b for a, b in merges)
    assert len(vocab) == 258


def test_training_stops_at_vocab_size(fixtures_dir):
    vocab, merges = train_bpe(fixtures_dir / "corpus.en", 300, [EOT])
    assert len(vocab) == 300 and len(merges) == 300 - 257


def test_multiple_files_count_as_one_corpus(tmp_path, fixtures_dir):
    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")
    middle = text.index(".\n", len(text) // 2) + 1  # after a non-space, before a space: a safe cut
    first, second = write(tmp_path, text[:middle], "a.txt"), write(tmp_path, text[middle:], "b.txt")
    assert train_bpe([first, second], 400, [EOT]) == train_bpe(fixtures_dir / "corpus.en", 400, [EOT])


def test_chunked_and_parallel_counting_match_whole_text(tmp_path, fixtures_dir, monkeypatch):
    # no special tokens in a line-heavy text, so chunks must end at "non-space byte + newline"
    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8").replace(EOT, "\n \n\n  x")
    path = write(tmp_path, text * 2)
    expected = Counter(GPT2_REGEX.findall(text * 2))
    chunks = pretokenize.plan_chunks(path, 10_000, [])
    assert len(chunks) > 10 and chunks[0][1] == 0 and chunks[-1][2] == path.stat().st_size
    assert all(a[2] == b[1] for a, b in itertools.pairwise(chunks))
    monkeypatch.setattr(train, "MAX_CHUNK_BYTES", 20_000)
    monkeypatch.setattr(train, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(pretokenize, "BOUNDARY_SEARCH_BYTES", 64)
    assert train.count_pretokens([path], [], num_workers=1) == expected
    assert train.count_pretokens([path], [], num_workers=2) == expected


def test_chunks_end_at_special_tokens(tmp_path, fixtures_dir):
    lines = (fixtures_dir / "corpus.en").read_text(encoding="utf-8").splitlines(keepends=True)
    path = write(tmp_path, EOT.join(lines))
    data = path.read_bytes()
    chunks = pretokenize.plan_chunks(path, 5_000, [EOT.encode()])
    assert len(chunks) > 5
    assert all(data[start : start + len(EOT)] == EOT.encode() for _, start, _ in chunks[1:])
    special_regex = special_token_regex([EOT])
    text = data.decode("utf-8")
    expected = Counter(token for piece in split_on_specials(text, special_regex)[::2] for token in GPT2_REGEX.findall(piece))
    assert train.count_pretokens([path], [EOT], num_workers=1) == expected


@pytest.mark.parametrize(("special", "cut"), [("<|turn end|>\n", pretokenize.SAFE_BYTE_CUT_AT_NEWLINE),
                                              ("<|end of turn|>", pretokenize.SAFE_BYTE_CUT)])
def test_no_chunk_starts_inside_a_special_token_with_whitespace(tmp_path, monkeypatch, special, cut):
    data = special.encode().join(f"line {index} says hello to the world.\n".encode() for index in range(400))
    path = write(tmp_path, data)
    inside = {start + offset for start in range(len(data)) if data.startswith(special.encode(), start)
              for offset in range(1, len(special))}
    for chunk_bytes in range(300, 400):  # targets land on every byte of some special token
        chunks = pretokenize.plan_chunks(path, chunk_bytes, [special.encode()], cut)
        assert not {start for _, start, _ in chunks} & inside, chunk_bytes
        assert chunks[0][1] == 0 and all(a[2] == b[1] for a, b in itertools.pairwise(chunks))
        assert chunks[-1][2] == len(data)
    monkeypatch.setattr(train, "MAX_CHUNK_BYTES", 347)
    text = data.decode("utf-8")
    pieces = split_on_specials(text, special_token_regex([special]))[::2]
    assert train.count_pretokens([path], [special], num_workers=1) == Counter(
        token for piece in pieces for token in GPT2_REGEX.findall(piece))


def test_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt: input file not found"):
        train_bpe(tmp_path / "nope.txt", 300, [EOT])


def test_folder_as_input(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        train_bpe(tmp_path, 300, [EOT])


def test_pipe_as_input_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)  # opening it would wait for a writer: the check must come first
    with pytest.raises(ValueError, match=r"corpus.fifo: not a regular file .* save the text to a file first"):
        train_bpe(fifo, 300, [EOT])


@pytest.mark.parametrize("text", ["", "<|endoftext|><|endoftext|>"])
def test_empty_corpus(tmp_path, text):
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe(write(tmp_path, text), 300, [EOT])


def test_vocab_too_small(tmp_path):
    with pytest.raises(ValueError, match="at least 256 bytes \\+ 2 special tokens = 258"):
        train_bpe(write(tmp_path, "hello"), 257, [EOT, "<pad>"])


def test_invalid_utf8_reports_byte_offset(tmp_path, monkeypatch):
    path = write(tmp_path, b"hello world\n" * 1000 + b"bad \xff byte\n" + b"more text\n" * 1000)
    with pytest.raises(ValueError, match=r"invalid UTF-8 at byte offset 12004"):
        train_bpe(path, 300, [EOT])
    monkeypatch.setattr(train, "MAX_CHUNK_BYTES", 1000)
    monkeypatch.setattr(train, "PARALLEL_MIN_BYTES", 0)
    with pytest.raises(ValueError, match=r"invalid UTF-8 at byte offset 12004"):
        train.count_pretokens([path], [EOT], num_workers=2)


def test_heap_key_orders_pairs_greatest_first():
    import random

    rng = random.Random(0)
    tokens = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))) for _ in range(60)] + [b"a", b"ab", b"\x00"]
    pairs = [(a, b) for a in tokens[:25] for b in tokens[25:]]
    by_key = sorted(pairs, key=lambda pair: train._inverted_key(pair[0])[:-2] + train._inverted_key(pair[0])[-2:]
                    + train._inverted_key(pair[1]))
    assert by_key == sorted(pairs, reverse=True)
