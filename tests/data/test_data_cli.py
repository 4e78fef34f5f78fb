"""`gpt25 data prepare | corpus | info` end to end, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt25.cli import main
from gpt25.data import load_split, read_manifest
from gpt25.tokenizer import Tokenizer


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_corpus_prepare_info(
    tmp_path: Path, capsys: pytest.CaptureFixture, tokenizer_dir: Path, make_documents, write_text_source
) -> None:
    source = write_text_source(tmp_path / "docs.txt", make_documents(60))
    code, out, _ = run(capsys, "data", "corpus", "--source", str(source), "--out", str(tmp_path / "corpus.txt"))
    assert code == 0 and out.startswith(f"{tmp_path / 'corpus.txt'}: 60 documents, ")
    assert (tmp_path / "corpus.txt").read_text(encoding="utf-8").count("<|endoftext|>") == 59

    args = [
        "data",
        "prepare",
        "--source",
        str(tmp_path / "corpus.txt"),
        "--doc-split",
        "file",
        "--tokenizer",
        str(tokenizer_dir),
        "--out",
        str(tmp_path / "out"),
        "--val-docs",
        "0",
        "--workers",
        "2",
        "--shard-tokens",
        "256",
        "--no-progress",
    ]
    code, out, err = run(capsys, *args)
    assert (
        err
        == "gpt25 data: warning: split 'val' got no documents; pass a larger --val_fraction / --val_docs or more data\n"
    )
    manifest = read_manifest(tmp_path / "out")
    # one file-document: the corpus' own 59 "<|endoftext|>" separators are its text, 1 EOT id is appended
    assert code == 0 and manifest["splits"]["train"]["documents"] == 1 and manifest["splits"]["val"]["tokens"] == 0
    tokenizer = Tokenizer.load(tokenizer_dir)
    tokens = load_split(tmp_path / "out", "train", tokenizer)
    assert int((tokens == tokenizer.eot_id).sum()) == 1 and tokens[-1] == tokenizer.eot_id
    assert (
        f"train: {manifest['splits']['train']['tokens']:,} tokens, 1 documents, {len(manifest['splits']['train']['shards'])} shards"
        in out
    )

    code, out, _ = run(capsys, "data", "info", str(tmp_path / "out"), "--verify")
    assert code == 0 and "all shards verified" in out
    shard = tmp_path / "out" / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-2] + b"\0\0")
    code, out, _ = run(capsys, "data", "info", str(tmp_path / "out"), "--verify")
    assert code == 1 and "bad: shard" in out and "does not match the sha256" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["data", "prepare", "--source", "{tmp}/none.txt", "--tokenizer", "{tok}", "--out", "{tmp}/o"],
            "source '{tmp}/none.txt' matched no files",
        ),
        (
            [
                "data",
                "prepare",
                "--source",
                "{tmp}/empty.txt",
                "--tokenizer",
                "{tok}",
                "--out",
                "{tmp}/o",
                "--no-progress",
            ],
            "yielded no documents",
        ),
        (
            [
                "data",
                "prepare",
                "--source",
                "{tmp}/empty.txt",
                "--tokenizer",
                "{tok}",
                "--out",
                "{tmp}/o",
                "--workers",
                "0",
            ],
            "--workers and --shard_tokens must be >= 1",
        ),
        (["data", "info", "{tmp}"], "no manifest.json in {tmp}"),
        (["data", "info", "{tmp}/foreign"], "{tmp}/foreign/manifest.json is damaged: complete is missing"),
        (["data", "corpus", "--source", "{tmp}/one.txt", "--out", "{tmp}"], "--out {tmp} is a folder"),
        (["data", "corpus", "--source", "{tmp}/one.txt.gz", "--out", "{tmp}/c.txt"], "one.txt.gz is compressed"),
        (
            ["data", "prepare", "--source", "{tmp}/one.txt", "--tokenizer", "{tok}", "--out", "{tmp}/one.txt/sub"],
            "--out {tmp}/one.txt/sub: {tmp}/one.txt is a file, not a folder",
        ),
        (
            ["data", "prepare", "--source", "{tmp}/utf16.txt", "--tokenizer", "{tok}", "--out", "{tmp}/o",
             "--workers", "2", "--no-progress"],
            "{tmp}/utf16.txt is UTF-16 or UTF-32 text",
        ),
    ],
)
def test_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, tokenizer_dir: Path, argv: list[str], message: str
) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "one.txt").write_text("one document\n")
    (tmp_path / "one.txt.gz").write_bytes(b"\x1f\x8b")
    (tmp_path / "utf16.txt").write_text("a document\n", encoding="utf-16")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"format": "gpt25-token-shards"}')
    argv = [arg.format(tmp=tmp_path, tok=tokenizer_dir) for arg in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("gpt25 data: error: ")
    assert message.format(tmp=tmp_path) in err


def test_val_options_are_exclusive(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(
        capsys,
        "data",
        "prepare",
        "--source",
        "x",
        "--tokenizer",
        "t",
        "--out",
        "o",
        "--val-docs",
        "3",
        "--val-fraction",
        "0.1",
    )
    assert code == 2 and "not allowed with argument" in err
