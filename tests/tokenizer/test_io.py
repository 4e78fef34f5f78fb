"""Saving/loading (versioned format, corrupt files), fingerprints, GPT-2 files, tiktoken and HF export."""

from __future__ import annotations

import json

import pytest

from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.io import (
    MERGES_FILE,
    META_FILE,
    VOCAB_FILE,
    bytes_to_printable,
    printable_to_bytes,
)

EOT = "<|endoftext|>"
TEXT = "The quick brown fox<|endoftext|> jumps over   the lazy dog.\n\nnaïve — 東京 🤖 it's 1234"


def test_printable_byte_encoding_round_trips():
    every_byte = bytes(range(256))
    assert printable_to_bytes(bytes_to_printable(every_byte), "x") == every_byte
    assert bytes_to_printable(b" the\n") == "ĠtheĊ"


def test_save_load_round_trip(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.vocab == small_tokenizer.vocab and loaded.merges == small_tokenizer.merges
    assert loaded.special_tokens == [EOT] and loaded.eot_id == 256
    assert loaded.fingerprint() == small_tokenizer.fingerprint()
    assert loaded.encode(TEXT) == small_tokenizer.encode(TEXT)
    meta = json.loads((tmp_path / "tok" / META_FILE).read_text())
    assert meta["format"] == "gpt25-bpe-tokenizer" and meta["version"] == 1 and meta["vocab_size"] == 500


def test_saved_files_are_gpt2_style(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path)
    again = Tokenizer.from_files(tmp_path / VOCAB_FILE, tmp_path / MERGES_FILE, [EOT])
    assert again.fingerprint() == small_tokenizer.fingerprint()


def test_gpt2_folder_round_trip(gpt2_tokenizer, tmp_path):
    gpt2_tokenizer.save(tmp_path)
    assert Tokenizer.load(tmp_path).fingerprint() == gpt2_tokenizer.fingerprint()


def test_fingerprint_depends_on_content(small_tokenizer):
    fingerprint = small_tokenizer.fingerprint()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert Tokenizer(small_tokenizer.vocab, small_tokenizer.merges, [EOT]).fingerprint() == fingerprint
    assert Tokenizer(small_tokenizer.vocab, small_tokenizer.merges, [EOT, "<pad>"]).fingerprint() != fingerprint
    assert Tokenizer(small_tokenizer.vocab, small_tokenizer.merges[:-1], [EOT]).fingerprint() != fingerprint


def corrupt(folder, name, content):
    (folder / name).write_text(content, encoding="utf-8")


@pytest.mark.parametrize(
    "name, content, message",
    [
        (META_FILE, "{not json", r"gpt25_tokenizer.json: not valid JSON"),
        (META_FILE, '{"format": "hf-tokenizer", "version": 1}', r"gpt25_tokenizer.json: not a gpt25 tokenizer \(format is 'hf-tokenizer'"),
        (META_FILE, "[1, 2]", r"gpt25_tokenizer.json: not a gpt25 tokenizer"),
        (VOCAB_FILE, '{"a": 0}', r"vocab.json: has 1 tokens but gpt25_tokenizer.json says vocab_size 500"),
        (VOCAB_FILE, '{"a": "zero"}', r"vocab.json: token 'a' has id 'zero'"),
        (VOCAB_FILE, '{"a b": 0}', r"vocab.json: token 'a b' has character ' '"),
        (MERGES_FILE, "#version: 0.2\nĠ t\nbroken\n", r"merges.txt, line 3: expected two tokens"),
        (MERGES_FILE, "#version: 0.2\nĠ t\n", r"fingerprint does not match"),
        (MERGES_FILE, "#version: 0.2\nĠ zzzz\n", r"merges.txt: merge 0 \(b' ', b'zzzz'\) uses or makes a token missing"),
        (MERGES_FILE, "#version: 0.2\nĠ \u0100\u4e00\n", r"merges.txt: token 'Ā一' has character '一', which is outside"),
    ],
)
def test_corrupt_files_give_one_line_errors(small_tokenizer, tmp_path, name, content, message):
    small_tokenizer.save(tmp_path)
    corrupt(tmp_path, name, content)
    with pytest.raises(ValueError, match=message) as error:
        Tokenizer.load(tmp_path)
    assert "\n" not in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_unsupported_version(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    corrupt(tmp_path, META_FILE, json.dumps(meta | {"version": 99}))
    with pytest.raises(ValueError, match="unsupported format version 99"):
        Tokenizer.load(tmp_path)


def test_missing_folder_or_file(small_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        Tokenizer.load(tmp_path / "absent")
    small_tokenizer.save(tmp_path)
    (tmp_path / MERGES_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt: file not found"):
        Tokenizer.load(tmp_path)


def test_gpt2_files_folder_names_the_import_command(gpt2_files, tmp_path):
    for source, name in zip(gpt2_files, (VOCAB_FILE, MERGES_FILE), strict=True):
        (tmp_path / name).write_bytes(source.read_bytes())
    with pytest.raises(FileNotFoundError) as error:
        Tokenizer.load(tmp_path)
    assert str(error.value) == (
        f"{tmp_path / META_FILE}: file not found, so {tmp_path} is not a gpt25 tokenizer folder (for GPT-2-style "
        "files, convert them: gpt25 tokenizer import --vocab VOCAB.json --merges MERGES.txt --out NEW_DIR)"
    )


def test_non_utf8_file(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path)
    (tmp_path / VOCAB_FILE).write_bytes(b'{"\xff": 1}')
    with pytest.raises(ValueError, match="vocab.json: not UTF-8 text"):
        Tokenizer.load(tmp_path)


def test_to_tiktoken_matches(small_tokenizer, gpt2_tokenizer, fixtures_dir):
    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")[:20_000] + TEXT
    for tokenizer in (small_tokenizer, gpt2_tokenizer):
        encoding = tokenizer.to_tiktoken()
        assert encoding.encode(text, allowed_special="all") == tokenizer.encode(text)
        assert encoding.n_vocab == tokenizer.vocab_size


def test_huggingface_export_matches(small_tokenizer, gpt2_tokenizer, fixtures_dir, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    text = (fixtures_dir / "corpus.en").read_text(encoding="utf-8")[:20_000] + TEXT + " \n  x \u00a0y"
    for index, tokenizer in enumerate((small_tokenizer, gpt2_tokenizer)):
        path = tokenizer.save_huggingface(tmp_path / f"tokenizer{index}.json")
        hf = tokenizers.Tokenizer.from_file(str(path))
        ids = tokenizer.encode(text)
        assert hf.encode(text).ids == ids
        assert hf.decode(ids, skip_special_tokens=False) == text
    assert small_tokenizer.save_huggingface(tmp_path) == tmp_path / "tokenizer.json"


def test_duplicate_token_bytes_survive_save_and_load(tmp_path):
    # BPE can build one byte string by two merges: "abc" = "ab" + "c" = "a" + "bc"
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"bc", 258: b"abc", 259: b"abc"}
    merges = [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"bc")]
    tokenizer = Tokenizer(vocab, merges, [EOT])
    assert tokenizer.encode("abc abcab") == [258, 32, 258, 256]
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.vocab == tokenizer.vocab and loaded.fingerprint() == tokenizer.fingerprint()
    assert json.loads((tmp_path / META_FILE).read_text())["duplicate_tokens"] == [[259, "abc"]]
    assert loaded.to_tiktoken().encode("abc abcab") == [258, 32, 258, 256]


def test_load_trusts_the_recorded_fingerprint_only_for_the_saved_bytes(small_tokenizer, tmp_path, monkeypatch):
    from gpt25.tokenizer import io

    small_tokenizer.save(tmp_path)
    expected = small_tokenizer.fingerprint()  # before counting: the session's tokenizer may not have computed it yet
    calls = []
    recompute = io.compute_fingerprint
    monkeypatch.setattr(io, "compute_fingerprint", lambda *args: calls.append(1) or recompute(*args))
    assert Tokenizer.load(tmp_path).fingerprint() == expected and calls == []

    entries = json.loads((tmp_path / VOCAB_FILE).read_text(encoding="utf-8"))
    corrupt(tmp_path, VOCAB_FILE, json.dumps(entries, ensure_ascii=True, indent=4))  # same tokens, other bytes
    loaded = Tokenizer.load(tmp_path)
    assert calls == [1] and loaded.fingerprint() == expected
    assert loaded.encode(TEXT) == small_tokenizer.encode(TEXT)


@pytest.mark.parametrize("field, value", [("fingerprint", "0" * 64), ("special_tokens", [EOT, "<pad>"])])
def test_an_edited_meta_file_is_refused(small_tokenizer, tmp_path, field, value):
    small_tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    corrupt(tmp_path, META_FILE, json.dumps(meta | {field: value}))
    with pytest.raises(ValueError, match="fingerprint does not match"):
        Tokenizer.load(tmp_path)


def test_folders_saved_without_a_content_digest_still_load(small_tokenizer, tmp_path):
    small_tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    del meta["content_sha256"]
    corrupt(tmp_path, META_FILE, json.dumps(meta))
    assert Tokenizer.load(tmp_path).fingerprint() == small_tokenizer.fingerprint()


def test_merge_ids_read_from_the_files_equal_those_built_from_bytes(gpt2_tokenizer):
    """from_files maps merges to ids by their written tokens; the constructor by their bytes."""
    rebuilt = Tokenizer(gpt2_tokenizer.vocab, gpt2_tokenizer.merges, [EOT])
    assert len(rebuilt.merges) == 50000 and (rebuilt._merge_ids == gpt2_tokenizer._merge_ids).all()
    assert rebuilt.merges[0] == (b" ", b"t") and gpt2_tokenizer._merge_ids[0].tolist() == [220, 83, 256]
