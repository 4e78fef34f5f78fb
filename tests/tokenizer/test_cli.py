"""`gpt25 tokenizer train|encode|decode|info`, including one-line errors and no partial output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpt25.cli import main
from gpt25.tokenizer import Tokenizer

EOT = "<|endoftext|>"


def run_cli(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt25", *argv], input=stdin, capture_output=True, timeout=120, check=False)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("cli") / "tok"
    result = run_cli("tokenizer", "train", "--input", str(fixtures_dir / "corpus.en"), "--vocab-size", "400",
                     "--special-token", EOT, "--out", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert b"pre-tokenizing" in result.stderr and b"merging" in result.stderr  # progress bars
    return out


def test_train_writes_a_loadable_tokenizer(trained_dir, fixtures_dir):
    tokenizer = Tokenizer.load(trained_dir)
    assert tokenizer.vocab_size == 400 and tokenizer.special_tokens == [EOT]
    from gpt25.tokenizer import train_bpe

    assert (tokenizer.vocab, tokenizer.merges) == train_bpe(fixtures_dir / "corpus.en", 400, [EOT])


def test_encode_decode_round_trip_through_stdin(trained_dir):
    text = "Hello there<|endoftext|> naïve 東京\n".encode()
    encoded = run_cli("tokenizer", "encode", "--tokenizer", str(trained_dir), stdin=text)
    assert encoded.returncode == 0, encoded.stderr.decode()
    ids = [int(word) for word in encoded.stdout.split()]
    assert ids == Tokenizer.load(trained_dir).encode(text.decode())
    decoded = run_cli("tokenizer", "decode", "--tokenizer", str(trained_dir), stdin=encoded.stdout)
    assert decoded.returncode == 0 and decoded.stdout == text


def test_info(trained_dir, capsys):
    code, out, _ = run_main(["tokenizer", "info", str(trained_dir), "--longest", "3"], capsys)
    assert code == 0
    assert "vocab size:     400" in out and "'<|endoftext|>' = 256" in out
    assert out.count(" bytes ") == 3
    from gpt25.tokenizer.table import use_c_extension

    assert ("encoder:        C extension" in out) == use_c_extension()


def test_info_names_the_pure_python_encoder(trained_dir, capsys, monkeypatch):
    monkeypatch.setenv("GPT25_PURE_PYTHON", "1")
    _, out, _ = run_main(["tokenizer", "info", str(trained_dir)], capsys)
    assert "encoder:        pure Python" in out


def test_existing_output_needs_force(trained_dir, fixtures_dir, tmp_path, capsys):
    import shutil

    trained_dir = shutil.copytree(trained_dir, tmp_path / "tok")
    before = (trained_dir / "merges.txt").read_bytes()
    argv = ["tokenizer", "train", "--input", str(fixtures_dir / "corpus.en"), "--vocab-size", "300",
            "--out", str(trained_dir), "--quiet"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and err == f"gpt25 tokenizer: error: {trained_dir} already exists; pass --force to replace it\n"
    assert (trained_dir / "merges.txt").read_bytes() == before
    code, _, _ = run_main([*argv, "--force"], capsys)
    assert code == 0 and Tokenizer.load(trained_dir).vocab_size == 300
    assert not [path for path in trained_dir.parent.iterdir() if path.name.startswith(".")]  # no staging left


@pytest.mark.parametrize(
    "content, vocab_size, message",
    [
        (None, "300", "missing.txt: input file not found"),
        (b"", "300", "empty corpus"),
        (b"hello", "256", "vocab_size 256 is too small: it must be at least 256 bytes + 1 special tokens = 257"),
        (b"caf\xc3\xa9 \xe9t\xe9", "300", "invalid UTF-8 at byte offset 6"),
    ],
)
def test_train_bad_input(tmp_path, capsys, content, vocab_size, message):
    path = tmp_path / "missing.txt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    code, _, err = run_main(["tokenizer", "train", "--input", str(path), "--vocab-size", vocab_size,
                             "--out", str(out), "--quiet"], capsys)
    assert code == 2 and err.startswith("gpt25 tokenizer: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (["missing.txt"] if content is not None else [])


def test_decode_bad_ids(trained_dir):
    result = run_cli("tokenizer", "decode", "--tokenizer", str(trained_dir), stdin=b"72 400\n")
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr == b"gpt25 tokenizer: error: token id 400 is out of range: this tokenizer has ids 0..399\n"
    result = run_cli("tokenizer", "decode", "--tokenizer", str(trained_dir), stdin=b"72 x1\n")
    assert result.returncode == 2 and b"'x1' is not a token id" in result.stderr


def test_corrupt_tokenizer_dir(tmp_path, capsys):
    (tmp_path / "gpt25_tokenizer.json").write_text('{"format": "something-else"}')
    code, _, err = run_main(["tokenizer", "info", str(tmp_path)], capsys)
    assert code == 2 and "gpt25_tokenizer.json: not a gpt25 tokenizer (format is 'something-else'" in err
