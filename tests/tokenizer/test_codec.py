"""Tokenizer encode/decode: GPT-2 equality with tiktoken, rank-ordered merges, specials, streaming."""

from __future__ import annotations

import io
import itertools

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt25.tokenizer import Tokenizer

EOT = "<|endoftext|>"
SAMPLES = [
    "", "Hello, world!", "  leading and trailing  ", "tabs\tand\nnewlines\r\n\r\n  x", "don't we'll I'M they've",
    "naïve café — 東京 🤖👍🏽 Привет", "1234567 3.14159 ½ ²", "a\u00a0b\u2028c\x1cd", "\n\n\n   \n",
]


def bytes_tokenizer(special_tokens=None) -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], special_tokens)


@pytest.mark.parametrize("text", SAMPLES)
def test_gpt2_matches_tiktoken_on_samples(gpt2_tokenizer, tiktoken_gpt2, text):
    assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text)
    assert gpt2_tokenizer.decode(gpt2_tokenizer.encode(text)) == text


def test_gpt2_known_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Hello world") == [15496, 995]
    assert gpt2_tokenizer.encode("Hello<|endoftext|>") == [15496, 50256]
    assert gpt2_tokenizer.eot_id == 50256 and gpt2_tokenizer.vocab_size == 50257


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_gpt2_matches_tiktoken_on_any_text(gpt2_tokenizer, tiktoken_gpt2, text):
    """Hypothesis also tries string constants from the code, such as "<|endoftext|>": a registered
    special token in the text is its own id, as with tiktoken's allowed_special="all"."""
    assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_python_encoder_matches_tiktoken_on_any_text(python_gpt2_tokenizer, tiktoken_gpt2, text):
    assert python_gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


def test_python_encoder_matches_tiktoken_on_a_corpus(python_gpt2_tokenizer, tiktoken_gpt2, fixtures_dir):
    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8") + "".join(SAMPLES)
    assert python_gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([EOT, "<|pad|>", "<|endoftext|><|endoftext|>"])), max_size=8))
def test_round_trip_with_specials(small_tokenizer_with_specials, pieces):
    text = "".join(pieces)
    assert small_tokenizer_with_specials.decode(small_tokenizer_with_specials.encode(text)) == text


@pytest.fixture(scope="module")
def small_tokenizer_with_specials(small_tokenizer):
    return Tokenizer(small_tokenizer.vocab, small_tokenizer.merges, [EOT, "<|pad|>", EOT + EOT])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([EOT, "<|pad|>", "a" + EOT + "b"])), max_size=6))
def test_encode_documents_encodes_each_text_then_end_of_text(small_tokenizer_with_specials, texts):
    tokenizer = small_tokenizer_with_specials  # its specials include EOT + EOT, which must not form across texts
    tokens = tokenizer.encode_documents(texts, numpy.uint16)
    assert tokens.dtype == numpy.uint16
    assert tokens.tolist() == [token for text in texts for token in tokenizer.encode(text) + [tokenizer.eot_id]]


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_encode_documents_can_leave_specials_in_text_ordinary(
    gpt2_tokenizer, python_gpt2_tokenizer, tiktoken_gpt2, pure
):
    """specials_in_text=False: tiktoken's encode_ordinary of each text, then the one <|endoftext|>."""
    tokenizer = python_gpt2_tokenizer if pure else gpt2_tokenizer
    texts = ["says <|endoftext|> inside", EOT, "a" + EOT + "b" + EOT, "plain", ""]
    tokens = tokenizer.encode_documents(texts, numpy.uint16, specials_in_text=False)
    expected = [token for text in texts for token in tiktoken_gpt2.encode_ordinary(text) + [50256]]
    assert tokens.tolist() == expected and int((tokens == 50256).sum()) == len(texts)
    assert tokenizer.decode(tokens.tolist()) == "".join(text + EOT for text in texts)
    assert tokenizer.encode(EOT) == [50256]  # encode itself still reads specials


def test_encode_documents_needs_end_of_text(small_tokenizer):
    with pytest.raises(ValueError, match="not registered"):
        Tokenizer(small_tokenizer.vocab, small_tokenizer.merges, ["<|pad|>"]).encode_documents(["x"])


def test_longest_special_token_wins():
    tokenizer = bytes_tokenizer([EOT, EOT + EOT])
    double, single = tokenizer.token_id(EOT + EOT), tokenizer.token_id(EOT)
    assert tokenizer.encode(EOT * 3) == [double, single]
    assert tokenizer.encode("a" + EOT + "b") == [97, single, 98]
    assert Tokenizer(tokenizer.vocab, [], [EOT + EOT, EOT]).encode(EOT * 2) == [double]


def test_special_token_ids_and_errors():
    tokenizer = bytes_tokenizer([EOT])
    assert tokenizer.eot_id == 256 and tokenizer.vocab[256] == EOT.encode()
    with pytest.raises(ValueError, match="not registered"):
        _ = bytes_tokenizer().eot_id
    with pytest.raises(ValueError, match="'<pad>' is not registered"):
        tokenizer.token_id("<pad>")
    assert bytes_tokenizer().encode(EOT) == list(EOT.encode())  # unregistered: plain text


def test_merges_apply_in_rank_order_not_left_to_right():
    vocab = {i: bytes([i]) for i in range(256)}
    vocab |= {256: b"bc", 257: b"ab", 258: b"abc"}
    tokenizer = Tokenizer(vocab, [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")])
    assert tokenizer.encode("abc") == [258]  # "bc" first (rank 0), then "a"+"bc"
    assert tokenizer.encode("ab") == [257]
    assert tokenizer.encode(" abc") == [32, 258]


def test_decode_replaces_invalid_utf8(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("é")
    assert len(ids) == 1
    partial = [token_id for token_id, token in gpt2_tokenizer.vocab.items() if token == b"\xc3"]
    assert gpt2_tokenizer.decode(partial + gpt2_tokenizer.encode("x")) == "\ufffdx"
    assert gpt2_tokenizer.decode_bytes(partial) == b"\xc3"


@pytest.mark.parametrize("bad", [50257, -1, 10**9])
def test_decode_rejects_out_of_range_ids(gpt2_tokenizer, bad):
    with pytest.raises(ValueError, match=f"token id {bad} is out of range: this tokenizer has ids 0..50256"):
        gpt2_tokenizer.decode([15496, bad])


def test_constructor_validates_vocab():
    with pytest.raises(ValueError, match="no gaps"):
        Tokenizer({i: bytes([i]) for i in range(256)} | {300: b"xy"}, [])
    with pytest.raises(ValueError, match="single-byte tokens"):
        Tokenizer({i: bytes([i]) for i in range(200)}, [])
    with pytest.raises(ValueError, match="missing from the vocab"):
        Tokenizer({i: bytes([i]) for i in range(256)}, [(b"a", b"b")])


def test_encode_iterable_over_lines_matches_tiktoken(gpt2_tokenizer, tiktoken_gpt2, english_dir):
    path = english_dir / "tinyshakespeare.txt"
    text = path.read_bytes().decode("utf-8")[:300_000]
    lines = io.StringIO(text, newline="")
    assert list(gpt2_tokenizer.encode_iterable(lines)) == tiktoken_gpt2.encode(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=12), st.sampled_from([EOT, " ", "\n", "  \n", "<|endof", "text|>"])), max_size=20))
def test_encode_iterable_equals_encode_for_any_split(gpt2_tokenizer, monkeypatch_chunk, pieces):
    assert list(gpt2_tokenizer.encode_iterable(pieces)) == gpt2_tokenizer.encode("".join(pieces))


@pytest.fixture(scope="module")
def monkeypatch_chunk():
    """Tiny stream chunks so that hypothesis' short inputs exercise the cutting logic."""
    from gpt25.tokenizer import codec

    saved = codec.STREAM_CHUNK_CHARS
    codec.STREAM_CHUNK_CHARS = 3
    yield
    codec.STREAM_CHUNK_CHARS = saved


def test_encode_many_and_encode_file_match_encode(gpt2_tokenizer, fixtures_dir, tmp_path, monkeypatch):
    from gpt25.tokenizer import codec

    texts = (fixtures_dir / "corpus.en").read_text(encoding="utf-8").split(" .\n")[:300]
    expected = [gpt2_tokenizer.encode(text) for text in texts]
    assert gpt2_tokenizer.encode_many(texts) == expected
    assert gpt2_tokenizer.encode_many(texts, num_workers=2) == expected
    path = tmp_path / "joined.txt"
    path.write_text(EOT.join(texts), encoding="utf-8")
    monkeypatch.setattr(codec, "FILE_CHUNK_BYTES", 5_000)
    whole = gpt2_tokenizer.encode(EOT.join(texts))
    for workers in (1, 2):
        assert [i for chunk in gpt2_tokenizer.encode_file(path, num_workers=workers) for i in chunk] == whole


@pytest.mark.parametrize("workers", [1, 2])
def test_encode_file_reports_invalid_utf8(gpt2_tokenizer, tmp_path, monkeypatch, workers):
    from gpt25.tokenizer import codec

    monkeypatch.setattr(codec, "FILE_CHUNK_BYTES", 64)
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok " * 100 + b"\xc3(")
    with pytest.raises(ValueError, match="invalid UTF-8 at byte offset 300"):
        list(gpt2_tokenizer.encode_file(path, num_workers=workers))


def test_encode_file_with_workers_cuts_bytes_only_at_safe_points(gpt2_tokenizer, tiktoken_gpt2, tmp_path, monkeypatch):
    """Byte ranges go to the workers: the cuts must keep multi-byte characters, whitespace runs and
    special tokens whole."""
    from gpt25.tokenizer import codec, pretokenize

    text = ("naïve café — 東京 🤖 x  \n\n\t y" + EOT + "z. " + "w" * 40 + "\r\n") * 40
    path = tmp_path / "mixed.txt"
    path.write_text(text, encoding="utf-8", newline="")
    data = path.read_bytes()
    monkeypatch.setattr(pretokenize, "BOUNDARY_SEARCH_BYTES", 50)  # cut points straddle search windows
    for piece_bytes in (1, 7, 64, 10_000):
        chunks = pretokenize.plan_chunks(path, piece_bytes, [], pretokenize.SAFE_BYTE_CUT)
        assert chunks[0][1] == 0 and chunks[-1][2] == len(data)
        for (_, start, end), (_, following, _) in itertools.pairwise(chunks):
            assert end == following and end - start >= piece_bytes
            assert 0x21 <= data[end - 1] <= 0x7E and data[end : end + 1] in b" \t\n\r\x0b\x0c"
        monkeypatch.setattr(codec, "FILE_CHUNK_BYTES", piece_bytes)
        for workers in (1, 2):
            ids = [i for chunk in gpt2_tokenizer.encode_file(path, num_workers=workers) for i in chunk]
            assert ids == tiktoken_gpt2.encode(text, allowed_special="all")


def test_encode_file_keeps_special_tokens_with_whitespace_whole(tmp_path, monkeypatch):
    """A special token with a space in it may span a whitespace cut: such files are cut after decoding."""
    from gpt25.tokenizer import codec

    tokenizer = bytes_tokenizer([EOT, "x \n y"])
    text = "ab x \n yz " * 300
    path = tmp_path / "specials.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(codec, "FILE_CHUNK_BYTES", 13)
    for workers in (1, 2):
        assert [i for chunk in tokenizer.encode_file(path, num_workers=workers) for i in chunk] == tokenizer.encode(text)
    assert tokenizer.encode(text).count(tokenizer.token_id("x \n y")) == 300


@pytest.mark.slow
def test_gpt2_matches_tiktoken_on_all_english(gpt2_tokenizer, tiktoken_gpt2, english_dir):
    paths = sorted(english_dir.glob("*.txt"))
    assert len(paths) >= 10
    for path in paths:
        text = path.read_bytes().decode("utf-8")
        assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text), path.name


def test_long_texts_are_encoded_in_pieces_identically(gpt2_tokenizer, tiktoken_gpt2, fixtures_dir, monkeypatch):
    from gpt25.tokenizer import codec

    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")[:30_000] + "  \n\n x y  z\u00a0" * 50
    monkeypatch.setattr(codec, "ENCODE_CHUNK_CHARS", 100)
    assert gpt2_tokenizer.encode(text) == tiktoken_gpt2.encode(text)
    assert gpt2_tokenizer.encode("x" * 1000) == tiktoken_gpt2.encode("x" * 1000)  # no cut point at all


@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from([EOT, "<|pad|>", "<|endoftext|><|endoftext|>"])), max_size=8))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_c_and_python_encoders_give_the_same_ids(small_tokenizer_with_specials, python_small_tokenizer, monkeypatch, pieces):
    """Both encoders, also when texts reach them in many pieces (8 characters each) and after a cache clear."""
    from gpt25.tokenizer import codec

    text = "".join(pieces)
    expected = small_tokenizer_with_specials.encode(text)
    assert python_small_tokenizer.encode(text) == expected
    assert python_small_tokenizer.encode_documents(pieces).tolist() == small_tokenizer_with_specials.encode_documents(pieces).tolist()
    monkeypatch.setattr(codec, "ENCODE_CHUNK_CHARS", 8)
    for tokenizer in (small_tokenizer_with_specials, python_small_tokenizer):
        assert tokenizer.encode(text) == expected
        tokenizer._encoder.clear()
        assert tokenizer.encode(text) == expected


@pytest.fixture(scope="module")
def python_small_tokenizer(small_tokenizer_with_specials, pure_python):
    tokenizer = small_tokenizer_with_specials
    return pure_python(lambda: Tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens))


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_cache_cleared_when_full_gives_the_same_ids(gpt2_files, tiktoken_gpt2, fixtures_dir, monkeypatch, pure_python, pure):
    from gpt25.tokenizer import codec

    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")
    monkeypatch.setattr(codec, "ENCODE_CHUNK_CHARS", 500)
    monkeypatch.setattr(codec, "CACHE_LIMIT", 40)
    make = lambda: Tokenizer.from_files(*gpt2_files)  # noqa: E731
    tokenizer = pure_python(make) if pure else make()
    assert tokenizer.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    sizes = []
    for line in text.splitlines()[:200]:
        assert tokenizer.encode(line) == tiktoken_gpt2.encode_ordinary(line)
        sizes.append(len(tokenizer._encoder))
    clears = sum(later < earlier for earlier, later in itertools.pairwise(sizes))
    assert clears > 10 and max(sizes) > 40


def test_decode_accepts_numpy_ids(gpt2_tokenizer):
    np = pytest.importorskip("numpy")
    ids = np.array(gpt2_tokenizer.encode("Hello world"), dtype=np.int64)
    assert gpt2_tokenizer.decode(ids) == "Hello world"
    with pytest.raises(ValueError, match="token id 60000 is out of range"):
        gpt2_tokenizer.decode(np.array([15496, 60000]))


def test_encode_iterable_without_whitespace_is_exact(gpt2_tokenizer, monkeypatch_chunk):
    pieces = ["abc"] * 500 + [" end"]
    assert list(gpt2_tokenizer.encode_iterable(pieces)) == gpt2_tokenizer.encode("".join(pieces))


def test_a_failed_merge_leaves_no_empty_cache_entry(python_gpt2_tokenizer, gpt2_tokenizer, monkeypatch):
    text = "Zyzzyva quixotic flummoxed"
    expected = gpt2_tokenizer.encode(text)
    python_gpt2_tokenizer._encoder.clear()

    def fail(pretoken):
        raise KeyboardInterrupt

    monkeypatch.setattr(python_gpt2_tokenizer._encoder, "encode_pretoken", fail)
    with pytest.raises(KeyboardInterrupt):
        python_gpt2_tokenizer.encode(text)
    monkeypatch.undo()
    assert python_gpt2_tokenizer.encode(text) == expected


@pytest.mark.parametrize("pure", [False, True], ids=["c", "python"])
def test_lone_surrogates_raise_and_leave_the_cache_whole(gpt2_files, pure_python, pure):
    """str.encode("utf-8") refuses lone surrogates; so does encoding, and the next call is unharmed."""
    make = lambda: Tokenizer.from_files(*gpt2_files)  # noqa: E731
    tokenizer = pure_python(make) if pure else make()
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        tokenizer.encode("Zyzzyva qu\ud800ixotic flummoxed")
    assert tokenizer.encode("Zyzzyva quixotic flummoxed") == make().encode("Zyzzyva quixotic flummoxed")
