"""`gpt25 tokenizer train|import|encode|decode|info`, including one-line errors and no partial output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    from gpt25.tokenizer.encoder import use_c_extension

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
            "--out", str(trained_dir), "--no_progress"]
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
                             "--out", str(out), "--no_progress"], capsys)
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


def train_argv(input_path: Path, out: Path, *extra: str) -> list[str]:
    return ["tokenizer", "train", "--input", str(input_path), "--vocab-size", "300", "--out", str(out), "--no_progress", *extra]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def refused_leaving(folder: Path, argv: list[str], capsys) -> str:
    """Run `argv`, which must fail with status 2 and leave every file under `folder` as it was; its stderr."""
    before = tree(folder)
    code, _, err = run_main(argv, capsys)
    assert code == 2 and tree(folder) == before
    return err


def test_force_refuses_a_folder_with_other_files(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("my notes")
    (out / "corpus.txt").write_bytes((fixtures_dir / "corpus.en").read_bytes())
    err = refused_leaving(tmp_path, train_argv(fixtures_dir / "corpus.en", out, "--force"), capsys)
    assert err == (f"gpt25 tokenizer: error: {out} holds files that are not a gpt25 tokenizer "
                   "(corpus.txt, notes.md); choose another --out\n")


def test_force_refuses_gpt2_files_without_the_gpt25_meta_file(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "gpt2"
    out.mkdir()
    (out / "vocab.json").write_text("{}")
    (out / "merges.txt").write_text("#version: 0.2\n")
    err = refused_leaving(out, train_argv(fixtures_dir / "corpus.en", out, "--force"), capsys)
    assert "(merges.txt, vocab.json); choose another --out" in err
    assert sorted(path.name for path in out.iterdir()) == ["merges.txt", "vocab.json"]


def test_force_never_replaces_a_folder_holding_the_input(trained_dir, fixtures_dir, tmp_path, capsys):
    import shutil

    out = shutil.copytree(trained_dir, tmp_path / "tok")
    err = refused_leaving(out, train_argv(out / "merges.txt", out, "--force"), capsys)
    assert err == (f"gpt25 tokenizer: error: input {out / 'merges.txt'} is inside --out {out}, "
                   "which would be replaced; choose another --out\n")


def test_force_replaces_an_empty_folder(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code, _, _ = run_main(train_argv(fixtures_dir / "corpus.en", out, "--force"), capsys)
    assert code == 0 and Tokenizer.load(out).vocab_size == 300
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(
    "out_name, message",
    [
        ("afile/tok", "cannot create --out {out}: {tmp}/afile is a file, not a folder; choose another --out"),
        ("afile/sub/tok", "cannot create --out {out}: {tmp}/afile is a file, not a folder; choose another --out"),
        ("afile", "--out {out} is a file, not a folder; choose another --out"),
        ("tok", "{out} already exists; pass --force to replace it"),
    ],
)
def test_out_is_checked_before_training(tmp_path, fixtures_dir, capsys, monkeypatch, out_name, message):
    import gpt25.tokenizer

    def no_training(*args, **kwargs):
        raise AssertionError("trained although --out cannot be written")

    monkeypatch.setattr(gpt25.tokenizer, "train_bpe", no_training)
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "tok").mkdir()
    out = tmp_path / out_name
    code, _, err = run_main(train_argv(fixtures_dir / "corpus.en", out), capsys)
    assert code == 2 and err == "gpt25 tokenizer: error: " + message.format(out=out, tmp=tmp_path) + "\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile", "tok"]


def test_pipe_input_is_refused_with_a_fix(tmp_path, fixtures_dir):
    out = tmp_path / "tok"
    result = run_cli(*train_argv(Path("/dev/stdin"), out), stdin=(fixtures_dir / "corpus.en").read_bytes())
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.decode() == (
        "gpt25 tokenizer: error: /dev/stdin: not a regular file (training reads its inputs in chunks, by size and "
        "offset, which a pipe or device has not); save the text to a file first and pass that\n"
    )


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _ignores_sigint(pid: int) -> bool:
    """Whether process `pid` ignores SIGINT (Linux /proc: the SigIgn mask); False once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)
    return bool(mask >> (signal.SIGINT - 1) & 1)


def _popen_taking_ctrl_c(command: list[str], **kwargs) -> subprocess.Popen:
    """Popen whose child acts on SIGINT as a command started from a terminal does, even if this process
    ignores SIGINT: a non-interactive shell starts background jobs (`uv run pytest &`) with SIGINT
    ignored, children inherit that, and the command would then finish with status 0 despite Ctrl-C.
    A Python handler here becomes the default action in the child (exec resets caught signals)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to see the pool's workers")
def test_ctrl_c_while_counting_prints_one_line_and_leaves_nothing(english_dir, tmp_path):
    out = tmp_path / "tok"
    inputs = [str(path) for path in sorted(english_dir.glob("pg*.txt"))]  # > 4 MB: counted by a pool
    command = [sys.executable, "-m", "gpt25", "tokenizer", "train", "--input", *inputs, "--vocab_size", "8192",
               "--out", str(out), "--no_progress", "--workers", "2"]
    process = _popen_taking_ctrl_c(command, stderr=subprocess.PIPE, start_new_session=True)

    def counting() -> bool:  # both workers started and past their set-up, which makes them ignore Ctrl-C
        workers = _children(process.pid)
        return len(workers) == 2 and all(map(_ignores_sigint, workers))

    deadline = time.monotonic() + 60
    while not counting() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counting(), "the counting pool did not start"
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.decode() == "gpt25 tokenizer: interrupted\n"
    assert list(tmp_path.iterdir()) == []


def test_special_tokens_without_endoftext_warn(tmp_path, fixtures_dir, capsys):
    code, _, err = run_main(train_argv(fixtures_dir / "corpus.en", tmp_path / "tok", "--special-token", "<|pad|>"), capsys)
    assert code == 0 and Tokenizer.load(tmp_path / "tok").special_tokens == ["<|pad|>"]
    assert err.splitlines()[0] == ('gpt25 tokenizer: warning: no "<|endoftext|>" special token: `gpt25 data prepare` '
                                   'needs it to end documents; add --special_token "<|endoftext|>"')
    code, _, err = run_main(train_argv(fixtures_dir / "corpus.en", tmp_path / "tok2"), capsys)
    assert code == 0 and "warning" not in err


def test_train_help_says_data_prepare_needs_endoftext():
    result = run_cli("tokenizer", "train", "--help")
    help_text = " ".join(result.stdout.decode().split())
    assert 'include "<|endoftext|>" too: `gpt25 data prepare` needs it to end documents' in help_text


def test_import_gpt2_files_encodes_as_from_files(gpt2_files, gpt2_tokenizer, tmp_path, capsys):
    out = tmp_path / "gpt2"
    code, _, err = run_main(["tokenizer", "import", "--vocab", str(gpt2_files[0]), "--merges", str(gpt2_files[1]),
                             "--out", str(out)], capsys)
    assert code == 0 and err == f"imported 50257 tokens (50000 merges) -> {out}\n"
    imported = Tokenizer.load(out)
    assert imported.special_tokens == [EOT] and imported.eot_id == 50256
    assert imported.fingerprint() == gpt2_tokenizer.fingerprint()
    text = "Hello world<|endoftext|> naïve café 東京 don't   stop\n\n  12345 🎉"
    assert imported.encode(text) == gpt2_tokenizer.encode(text)
    assert imported.encode("Hello world") == [15496, 995]


def test_import_refuses_existing_output_and_bad_files(gpt2_files, tmp_path, capsys):
    out = tmp_path / "gpt2"
    out.mkdir()
    argv = ["tokenizer", "import", "--vocab", str(gpt2_files[0]), "--merges", str(gpt2_files[1]), "--out", str(out)]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and err == f"gpt25 tokenizer: error: {out} already exists; pass --force to replace it\n"
    code, _, err = run_main([*argv[:3], str(tmp_path / "absent.json"), *argv[4:], "--force"], capsys)
    assert code == 2 and f"{tmp_path / 'absent.json'}: file not found" in err
    assert list(tmp_path.iterdir()) == [out] and list(out.iterdir()) == []
