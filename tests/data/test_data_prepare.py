"""`prepare`: round trip, split rules, parallel == serial, resume (also after SIGKILL), bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpt25.data import load_split, read_manifest
from gpt25.data.prepare import PrepareConfig, prepare
from gpt25.data.sources import NonUtf8Warning
from gpt25.tokenizer import Tokenizer

EOT = "<|endoftext|>"


def run_prepare(source: Path | list[str], tokenizer_dir: Path, out: Path, **overrides) -> dict:
    sources = [str(source)] if isinstance(source, Path) else source
    settings = {"val_fraction": 0.1, "workers": 1, "shard_tokens": 500, "progress": False} | overrides
    return prepare(PrepareConfig(sources=sources, tokenizer_dir=str(tokenizer_dir), out_dir=str(out), **settings))


def document_hash(text: str) -> int:
    """The hash that decides a document's split, as prepare's docstring defines it (64-bit BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def shard_checksums(out: Path) -> dict[str, str]:
    manifest = read_manifest(out)
    return {
        entry["file"]: entry["sha256"] for split in ("train", "val") for entry in manifest["splits"][split]["shards"]
    }


def test_round_trip_documents_to_shards(prepared: tuple[Path, list[str]], tokenizer: Tokenizer) -> None:
    data_dir, documents = prepared
    val_documents = [d for d in documents if document_hash(d) < 0.1 * 2**64]
    train_documents = [d for d in documents if document_hash(d) >= 0.1 * 2**64]
    assert 20 < len(val_documents) < 60
    for split, expected in (("train", train_documents), ("val", val_documents)):
        tokens = load_split(data_dir, split, tokenizer)
        assert tokenizer.decode(tokens.tolist()) == "".join(document + EOT for document in expected)
        assert int((tokens == tokenizer.eot_id).sum()) == len(expected)
        assert read_manifest(data_dir)["splits"][split]["documents"] == len(expected)
    manifest = read_manifest(data_dir)
    assert manifest["source"]["documents"] == 400 and manifest["dtype"] == "uint16"
    assert manifest["tokenizer_fingerprint"] == tokenizer.fingerprint() and manifest["vocab_size"] == 320


ANY_TEXT = st.text(st.characters(codec="utf-8"))
EDGE_TEXT = st.text(st.sampled_from("\n\r\t \ufeff"), max_size=3)  # what a reader might strip, rare in ANY_TEXT
RECORD_TEXT = ANY_TEXT | st.builds(lambda start, middle, end: start + middle + end, EDGE_TEXT, ANY_TEXT, EDGE_TEXT)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD_TEXT, min_size=1, max_size=8), form=st.sampled_from(["jsonl", "parquet"]))
def test_any_text_records_round_trip_through_prepare_and_decode(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer, records: list[str], form: str
) -> None:
    """Every non-blank record comes back exactly, edge newlines and all, whatever its text."""
    kept = [record for record in records if record.strip()]
    assume(kept and not any(EOT in record for record in kept))
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    source = folder / f"rows.{form}"
    if form == "jsonl":
        source.write_text("".join(json.dumps({"text": record}, ensure_ascii=False) + "\n" for record in records))
    else:
        pq.write_table(pa.table({"text": records}), source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the empty validation split
        run_prepare(source, tokenizer_dir, folder / "out", val_fraction=0.0)
    tokens = load_split(folder / "out", "train", tokenizer)
    assert tokenizer.decode(tokens.tolist()) == "".join(record + EOT for record in kept)
    assert read_manifest(folder / "out")["splits"]["train"]["documents"] == len(kept)


def test_two_workers_write_the_same_shards(
    tmp_path: Path, prepared: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    data_dir, _ = prepared
    run_prepare(data_dir.parent / "source.txt", tokenizer_dir, tmp_path / "out", workers=2)
    assert shard_checksums(tmp_path / "out") == shard_checksums(data_dir)


def test_split_depends_only_on_document_text(
    tmp_path: Path, tokenizer_dir: Path, make_documents, write_text_source
) -> None:
    documents = make_documents(200)
    run_prepare(write_text_source(tmp_path / "a.txt", documents), tokenizer_dir, tmp_path / "a", val_fraction=0.2)
    run_prepare(write_text_source(tmp_path / "b.txt", documents[::-1]), tokenizer_dir, tmp_path / "b", val_fraction=0.2)
    tokenizer = Tokenizer.load(tokenizer_dir)
    val_a = set(tokenizer.decode(load_split(tmp_path / "a", "val").tolist()).split(EOT))
    val_b = set(tokenizer.decode(load_split(tmp_path / "b", "val").tolist()).split(EOT))
    assert val_a == val_b and 30 < len(val_a) < 60


def test_val_docs_takes_the_smallest_hashes(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer, make_documents, write_text_source
) -> None:
    documents = make_documents(150)
    manifest = run_prepare(
        write_text_source(tmp_path / "s.txt", documents), tokenizer_dir, tmp_path / "out", val_fraction=None, val_docs=7
    )
    expected = sorted(documents, key=document_hash)[:7]
    assert manifest["splits"]["val"]["documents"] == 7
    decoded = tokenizer.decode(load_split(tmp_path / "out", "val").tolist())
    assert decoded == "".join(d + EOT for d in documents if d in expected)
    with pytest.raises(ValueError, match="--val_docs 150 leaves no training documents"):
        run_prepare(tmp_path / "s.txt", tokenizer_dir, tmp_path / "out2", val_fraction=None, val_docs=150)


def test_rerun_is_a_no_op_and_damage_is_rebuilt(
    tmp_path: Path, prepared: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    source = prepared[0].parent / "source.txt"
    run_prepare(source, tokenizer_dir, tmp_path / "out")
    reference = shard_checksums(tmp_path / "out")
    assert run_prepare(source, tokenizer_dir, tmp_path / "out")["last_run"]["documents_tokenized"] == 400
    damaged = tmp_path / "out" / "train_000010.bin"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    manifest = run_prepare(source, tokenizer_dir, tmp_path / "out")
    assert shard_checksums(tmp_path / "out") == reference
    assert 0 < manifest["last_run"]["documents_tokenized"] < 400


def test_different_settings_refuse_then_overwrite(
    tmp_path: Path, prepared: tuple[Path, list[str]], tokenizer_dir: Path
) -> None:
    source = prepared[0].parent / "source.txt"
    run_prepare(source, tokenizer_dir, tmp_path / "out")
    with pytest.raises(
        FileExistsError, match=r"different prepare \(shard_tokens changed\); choose another --out or pass --force"
    ):
        run_prepare(source, tokenizer_dir, tmp_path / "out", shard_tokens=700)
    manifest = run_prepare(source, tokenizer_dir, tmp_path / "out", shard_tokens=700, overwrite=True)
    assert manifest["settings"]["shard_tokens"] == 700
    assert (
        sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("train"))[-1]
        == f"train_{len(manifest['splits']['train']['shards']) - 1:06d}.bin"
    )


def test_changed_source_is_not_resumed(tmp_path: Path, tokenizer_dir: Path, make_documents, write_text_source) -> None:
    source = write_text_source(tmp_path / "s.txt", make_documents(50))
    run_prepare(source, tokenizer_dir, tmp_path / "out")
    write_text_source(source, make_documents(51))
    with pytest.raises(FileExistsError, match=r"\(source_files changed\)"):
        run_prepare(source, tokenizer_dir, tmp_path / "out")


def test_resume_after_sigkill(tmp_path: Path, tokenizer_dir: Path, make_documents, write_text_source) -> None:
    """Kill a `gpt25 data prepare` subprocess mid-run; the rerun must finish with the uninterrupted run's shards."""
    source = write_text_source(tmp_path / "big.txt", make_documents(800, seed=5))
    run_prepare(source, tokenizer_dir, tmp_path / "reference", shard_tokens=100)
    command = [
        sys.executable,
        "-m",
        "gpt25",
        "data",
        "prepare",
        "--source",
        str(source),
        "--tokenizer",
        str(tokenizer_dir),
        "--out",
        str(tmp_path / "out"),
        "--val-fraction",
        "0.1",
        "--workers",
        "1",
        "--shard-tokens",
        "100",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (
        len(list((tmp_path / "out").glob("train_*.bin"))) < 30
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    assert not read_manifest(tmp_path / "out")["complete"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    manifest = read_manifest(tmp_path / "out")
    assert shard_checksums(tmp_path / "out") == shard_checksums(tmp_path / "reference")
    assert manifest["splits"] == read_manifest(tmp_path / "reference")["splits"]
    assert manifest["last_run"]["documents_tokenized"] < 800


def test_non_utf8_lines_are_skipped_with_a_warning(tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer) -> None:
    source = tmp_path / "mixed.txt"
    source.write_bytes(b"good line one\nbad \xff\xfe line\nstill good\n\nsecond doc\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = run_prepare(source, tokenizer_dir, tmp_path / "out", val_fraction=0.0)
    messages = [(w.category, str(w.message)) for w in caught]
    assert (NonUtf8Warning, f"{source}:2: skipped a line that is not UTF-8 (invalid start byte)") in messages
    assert (
        UserWarning,
        "split 'val' got no documents; pass a larger --val_fraction / --val_docs or more data",
    ) in messages
    assert manifest["source"]["skipped_lines"] == 1
    decoded = tokenizer.decode(load_split(tmp_path / "out", "train").tolist())
    assert decoded == f"good line one\nstill good{EOT}second doc{EOT}"


def test_empty_source_is_an_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="yielded no documents"):
        run_prepare(tmp_path / "empty.txt", tokenizer_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="matched no files"):
        run_prepare([str(tmp_path / "nothing*.txt")], tokenizer_dir, tmp_path / "out")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"val_fraction": 1.5}, r"--val_fraction must be in \[0, 1\)"),
        ({"val_fraction": 0.1, "val_docs": 3}, "either --val_docs or --val_fraction"),
        ({"shard_tokens": 0}, "must be >= 1"),
    ],
)
def test_bad_config_values(tmp_path: Path, tokenizer_dir: Path, overrides: dict, message: str) -> None:
    settings = {"sources": ["x.txt"], "tokenizer_dir": str(tokenizer_dir), "out_dir": str(tmp_path)} | overrides
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**settings)


def test_manifest_is_plain_json(prepared: tuple[Path, list[str]]) -> None:
    manifest = json.loads((prepared[0] / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    assert set(entry) >= {"file", "tokens", "bytes", "sha256"} and len(entry["sha256"]) == 64
    assert np.isclose(
        manifest["splits"]["val"]["tokens"]
        / (manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]),
        0.1,
        atol=0.05,
    )


@pytest.mark.filterwarnings("ignore:split 'val' got no documents")
@pytest.mark.parametrize("pure_python", [False, True], ids=["c", "python"])
@pytest.mark.parametrize("workers", [1, 2])
def test_end_of_text_written_in_a_document_is_ordinary_text(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch, workers: int, pure_python: bool
) -> None:
    """A document quoting "<|endoftext|>" is no document boundary: its text comes back whole, and the
    shards hold exactly one EOT id per document (as tiktoken's encode_ordinary + EOT would give)."""
    from gpt25.data import prepare as prepare_module

    monkeypatch.setenv("GPT25_PURE_PYTHON", "1" if pure_python else "0")
    loaded, load = [], Tokenizer.load

    def load_tokenizer(folder: str) -> Tokenizer:  # built after the env var is set; the workers fork it
        loaded.append(load(folder))
        return loaded[-1]

    monkeypatch.setattr(Tokenizer, "load", staticmethod(load_tokenizer))
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 200)  # many tasks, so the workers take most
    documents = [f"doc {i} says {EOT} here" if i % 3 else f"{EOT}doc {i}{EOT}{EOT}" for i in range(60)]
    source = write_text_source_quietly(tmp_path / "docs.txt", documents)
    manifest = run_prepare(source, tokenizer_dir, tmp_path / "out", val_fraction=0.0, workers=workers)
    assert ("pure Python" in loaded[0].encoder_kind) == pure_python
    tokens = load_split(tmp_path / "out", "train").tolist()
    assert loaded[0].decode(tokens) == "".join(document + EOT for document in documents)
    assert tokens.count(loaded[0].eot_id) == len(documents) == manifest["splits"]["train"]["documents"]
    ends = [index + 1 for index, token in enumerate(tokens) if token == loaded[0].eot_id]
    starts = [0, *ends[:-1]]
    assert [loaded[0].decode(tokens[a:b]) for a, b in zip(starts, ends, strict=True)] == [d + EOT for d in documents]


@pytest.mark.parametrize("workers", [1, 2])
def test_damage_is_rebuilt_from_many_small_tasks(
    tmp_path: Path, prepared: tuple[Path, list[str]], tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """A resumed run tokenizes in-process until it passes the finished shards, then in the workers."""
    from gpt25.data import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 1_000)  # about 50 byte-range tasks
    source = prepared[0].parent / "source.txt"
    run_prepare(source, tokenizer_dir, tmp_path / "out", workers=workers)
    assert shard_checksums(tmp_path / "out") == shard_checksums(prepared[0])
    for name in ("train_000020.bin", "val_000001.bin"):
        damaged = tmp_path / "out" / name
        damaged.write_bytes(damaged.read_bytes()[:-10])
    manifest = run_prepare(source, tokenizer_dir, tmp_path / "out", workers=workers)
    assert shard_checksums(tmp_path / "out") == shard_checksums(prepared[0])
    assert 0 < manifest["last_run"]["documents_tokenized"] < 400


RAGGED_TEXT = (
    "\ufefffirst para\r\nline two\r\n\r\n\r\nsecond \xe9 para\r\n   \r\nthird\n\n\n\n  indented\n \t\n"
    "fourth\r\n\r\nlast line without newline"
)


@pytest.mark.parametrize("block_bytes", [1, 5, 16, 1 << 20])
def test_raw_blocks_give_the_documents_that_iter_documents_gives(tmp_path: Path, block_bytes: int) -> None:
    """Blocks end only after an empty line (also "\\r\\n" ones); workers decode and split them alone."""
    path = tmp_path / "ragged.txt"
    path.write_bytes(RAGGED_TEXT.encode() + b"\n\nbad \xff line\nafter bad\n\nend\n")
    blocks = paragraph_blocks(path, block_bytes)
    data = path.read_bytes()
    assert b"".join(blocks) == data
    block_ends = list(itertools.accumulate(map(len, blocks)))
    assert all(data[:end].endswith((b"\n\n", b"\n\r\n")) for end in block_ends if 0 < end < len(data))
    documents = documents_of_blocks(blocks)
    assert documents == iter_documents_quietly(path) and len(documents) == 8


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.sampled_from([b"a", b"b c", b" ", b"\t", b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf", b"\xff", b"\xc3\xa9"]), max_size=40),
    block_bytes=st.integers(1, 12),
    search_bytes=st.integers(3, 6),
)
def test_raw_blocks_equal_iter_documents_on_any_bytes(
    tmp_path: Path, pieces: list[bytes], block_bytes: int, search_bytes: int
) -> None:
    from gpt25.data import sources

    path = tmp_path / "any.txt"
    path.write_bytes(b"".join(pieces))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "BLOCK_SEARCH_BYTES", search_bytes)
        blocks = paragraph_blocks(path, block_bytes)
    assert b"".join(blocks) == path.read_bytes()
    assert documents_of_blocks(blocks) == iter_documents_quietly(path)


def paragraph_blocks(path: Path, block_bytes: int) -> list[bytes]:
    """The blocks that prepare's workers read for consecutive byte ranges of block_bytes."""
    from gpt25.data.sources import PARAGRAPH_STARTS_AFTER, read_block

    size = path.stat().st_size
    return [read_block(path, start, start + block_bytes, PARAGRAPH_STARTS_AFTER)
            for start in range(0, size, block_bytes)]


def documents_of_blocks(blocks: list[bytes]) -> list[str]:
    from gpt25.data.sources import decode_text_block, text_documents

    return [doc for i, block in enumerate(blocks) for doc in text_documents(decode_text_block(block, i == 0)[0], "blank-line")]


def iter_documents_quietly(path: Path) -> list[str]:
    from gpt25.data.sources import SourceStats, iter_documents

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonUtf8Warning)
        return list(iter_documents([str(path)], stats=SourceStats()))


def test_skipped_lines_are_numbered_across_raw_blocks(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt25.data import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 8)
    source = tmp_path / "mixed.txt"
    source.write_bytes(b"one\n\ntwo\nbad \xff\n\nthree\n\n\xfe\n" + b"four\n\n" * 3 + b"\xc3(\n")
    for workers in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = run_prepare(source, tokenizer_dir, tmp_path / f"out{workers}", val_fraction=0.0, workers=workers)
        messages = [str(w.message) for w in caught if w.category is NonUtf8Warning]
        assert [message.split(": skipped")[0] for message in messages] == [f"{source}:{n}" for n in (4, 8, 15)]
        assert manifest["source"]["skipped_lines"] == 3 and manifest["source"]["documents"] == 6


JSONL_PIECES = [
    b'{"text": "one"}\n', b'{"text": "two\\n\\nparas", "id": 3}\n', b'{"text": "  "}\n', b"\n", b"  \r\n",
    b'{"text": "crlf"}\r\n', b"\xef\xbb\xbf", b"\xff\n", b'{"text": "\xc3\xa9t\xc3\xa9"}\n', b'{"text": "no end"}',
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(JSONL_PIECES), max_size=30), block_bytes=st.integers(1, 40))
def test_jsonl_line_blocks_equal_iter_documents(tmp_path: Path, pieces: list[bytes], block_bytes: int) -> None:
    """Workers read JSONL as byte ranges moved to line starts; they find the documents the main process would."""
    from gpt25.data.sources import (
        LINE_STARTS_AFTER,
        decode_text_block,
        jsonl_block_documents,
        read_block,
        record_documents,
    )

    path = tmp_path / "rows.jsonl"
    data = b"".join(pieces)
    path.write_bytes(data)
    blocks = [read_block(path, start, start + block_bytes, LINE_STARTS_AFTER)
              for start in range(0, len(data), block_bytes)]
    assert b"".join(blocks) == data
    documents = []
    for index, block in enumerate(blocks):
        text, skipped = decode_text_block(block, at_file_start=index == 0)
        found, bad_line = jsonl_block_documents(text, partial(record_documents, text_field="text"), skipped)
        documents += found
        if bad_line is not None:  # a BOM that is not at the file's start makes a line invalid JSON
            with pytest.raises(ValueError, match="not a JSON object per line"):
                iter_documents_quietly(path)
            return
    assert documents == iter_documents_quietly(path)


def test_block_line_index_skips_the_lines_removed_as_not_utf8() -> None:
    from gpt25.data.sources import _block_line_index

    skipped = [(0, "bad"), (1, "bad"), (4, "bad")]  # block lines 2, 3, 5 remain as text lines 0, 1, 2
    assert [_block_line_index(index, skipped) for index in range(3)] == [2, 3, 5]
    assert _block_line_index(7, []) == 7


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_ranges_give_the_shards_and_errors_of_whole_files(
    tmp_path: Path, tokenizer_dir: Path, make_documents, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt25.data import prepare as prepare_module

    documents = make_documents(120, seed=3)
    text_source = write_text_source_quietly(tmp_path / "docs.txt", documents)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": document, "n": i}) + "\n" for i, document in enumerate(documents)))
    expected = run_prepare(text_source, tokenizer_dir, tmp_path / "text")
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 300)  # dozens of ranges, cut inside lines
    manifest = run_prepare(jsonl, tokenizer_dir, tmp_path / f"jsonl{workers}", workers=workers)
    assert manifest["splits"] == expected["splits"]

    lines = jsonl.read_bytes().split(b"\n")
    lines[40] = b"\xff not utf-8"
    lines[90] = b'{"body": "wrong field"}'
    jsonl.write_bytes(b"\n".join(lines))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=r"docs.jsonl:91: no field 'text' \(found: body\); pass --text_field NAME"):
            run_prepare(jsonl, tokenizer_dir, tmp_path / f"bad{workers}", workers=workers)
    assert [str(w.message).split(": skipped")[0] for w in caught if w.category is NonUtf8Warning] == [f"{jsonl}:41"]
    assert not list((tmp_path / f"bad{workers}").glob(".*.tmp"))  # finished shards stay, for a resume


def write_text_source_quietly(path: Path, documents: list[str]) -> Path:
    """The documents as a plain-text source, one paragraph each (they hold no blank lines)."""
    assert not any("\n\n" in document for document in documents)
    path.write_text("\n\n".join(documents) + "\n")
    return path


@pytest.mark.filterwarnings("ignore:split 'val' got no documents")
@pytest.mark.parametrize("val_docs", [None, 3])
def test_out_folder_inside_a_source_folder_is_no_source(
    tmp_path: Path, tokenizer_dir: Path, make_documents, write_text_source, val_docs: int | None
) -> None:
    """--out nest/shards with --source nest: its shards and manifest are not read back as sources,
    and the rerun resumes (a no-op) instead of refusing because source_files changed."""
    (tmp_path / "books").mkdir()
    (tmp_path / "nest").mkdir()
    write_text_source(tmp_path / "books" / "b.txt", make_documents(40, seed=1))
    write_text_source(tmp_path / "nest" / "a.txt", make_documents(30))
    sources = [str(tmp_path / "books"), str(tmp_path / "nest")]  # books' shards exist when nest is expanded
    options = {"val_fraction": None, "val_docs": val_docs}  # None and None: the default --val_fraction
    first = run_prepare(sources, tokenizer_dir, tmp_path / "nest" / "shards", **options)
    assert len(first["splits"]["train"]["shards"]) > 1
    assert first["source"]["files"] == 2 and first["source"]["documents"] == 70
    assert [path for path, _, _ in first["settings"]["source_files"]] == [
        str(tmp_path / "books" / "b.txt"), str(tmp_path / "nest" / "a.txt")
    ]
    again = run_prepare(sources, tokenizer_dir, tmp_path / "nest" / "shards", **options)
    assert again == first


@pytest.mark.parametrize(
    "source, overrides, error",
    [
        ("s.txt", {"val_fraction": None, "val_docs": 25}, "--val_docs 25 leaves no training documents"),
        ("empty.txt", {}, "yielded no documents"),
        ("bad.jsonl", {}, r"bad.jsonl:2: not a JSON object per line"),
        ("s.txt", {"tokenizer": "no_eot"}, r"special token '<\|endoftext\|>' is not registered"),
    ],
)
def test_a_failed_prepare_leaves_no_folder_behind(
    tmp_path: Path, tokenizer_dir: Path, tokenizer: Tokenizer, make_documents, write_text_source,
    source: str, overrides: dict, error: str,
) -> None:
    write_text_source(tmp_path / "s.txt", make_documents(20))
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\nnot json\n')
    Tokenizer(dict(tokenizer.vocab), tokenizer.merges, []).save(tmp_path / "no_eot")
    settings = dict(overrides)
    tokenizer_folder = tmp_path / settings.pop("tokenizer") if "tokenizer" in settings else tokenizer_dir
    (tmp_path / "existing").mkdir()
    for out in (tmp_path / "new" / "out", tmp_path / "existing"):
        with pytest.raises(ValueError, match=error):
            run_prepare(tmp_path / source, tokenizer_folder, out, **settings)
    assert not (tmp_path / "new").exists()  # the run made both folders: it removed both
    assert (tmp_path / "existing").is_dir() and not any((tmp_path / "existing").iterdir())


def test_out_below_a_file_is_a_one_line_error(
    tmp_path: Path, tokenizer_dir: Path, make_documents, write_text_source
) -> None:
    source = write_text_source(tmp_path / "s.txt", make_documents(5))
    (tmp_path / "afile").write_text("not a folder")
    message = rf"^--out {tmp_path}/afile/sub: {tmp_path}/afile is a file, not a folder; choose another --out$"
    with pytest.raises(NotADirectoryError, match=message):
        run_prepare(source, tokenizer_dir, tmp_path / "afile" / "sub")
    with pytest.raises(NotADirectoryError, match=rf"^--out {tmp_path}/afile: {tmp_path}/afile is a file"):
        run_prepare(source, tokenizer_dir, tmp_path / "afile")


class RecordingBar:
    """Stands in for tqdm: remembers its total and how far it was advanced."""

    bars: list[RecordingBar] = []

    def __init__(self, iterable=None, total: int | None = None, **_) -> None:
        self.iterable, self.total, self.n = iterable, total, 0
        RecordingBar.bars.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self) -> RecordingBar:
        return self

    def __exit__(self, *_) -> None:
        return None

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, **_) -> None:
        return None


@pytest.mark.filterwarnings("ignore:split 'val' got no documents")
@pytest.mark.parametrize("val_docs", [None, 4])
def test_progress_bar_total_is_the_size_of_the_source_files(
    tmp_path: Path, tokenizer_dir: Path, make_documents, monkeypatch: pytest.MonkeyPatch, val_docs: int | None
) -> None:
    from gpt25.data import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "tqdm", RecordingBar)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 300)
    monkeypatch.setattr(RecordingBar, "bars", [])
    documents = make_documents(50)
    text = write_text_source_quietly(tmp_path / "docs.txt", documents[:25])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": document}) + "\n" for document in documents[25:]))
    options = {"val_fraction": None, "val_docs": val_docs}  # None and None: the default --val_fraction
    run_prepare([str(text), str(jsonl)], tokenizer_dir, tmp_path / "out", progress=True, **options)
    bar = RecordingBar.bars[-1]
    assert bar.total == bar.n == text.stat().st_size + jsonl.stat().st_size
