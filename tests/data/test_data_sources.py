"""Document sources: plain text, JSONL, Parquet, Hugging Face (through its local-file builders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt25.data import sources
from gpt25.data.sources import SourceStats, iter_documents


def documents(*specs: str, **options) -> list[str]:
    return list(iter_documents(specs, **options))


def test_plain_text_blank_line_and_file_splits(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes("\ufeffFirst para\r\nline two\r\n\r\n\r\nSecond para\r\n   \r\nThird".encode())
    (tmp_path / "b.txt").write_text("B one\n\nB two\n")
    assert documents(str(tmp_path / "a.txt")) == ["First para\nline two", "Second para", "Third"]
    assert documents(str(tmp_path), doc_split="file") == [
        "First para\nline two\n\n\nSecond para\n   \nThird",
        "B one\n\nB two",
    ]
    assert documents(str(tmp_path / "*.txt")) == ["First para\nline two", "Second para", "Third", "B one", "B two"]


def iter_utf8_lines(path: Path, stats: SourceStats) -> list[str]:
    """The lines of a file as the readers must see them, one at a time: newlines normalised to "\\n",
    a leading BOM dropped, a line that is not UTF-8 skipped (and counted)."""
    lines = []
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):  # binary files split at "\\n" only
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.skipped_lines += 1
                continue
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            lines.append(line.rstrip("\r\n") + "\n" if line.endswith("\n") else line)
    return lines


def paragraphs_line_by_line(path: Path, stats: SourceStats) -> list[str]:
    """The definition of the blank-line split, one line at a time (what the block reader must equal)."""
    found, lines = [], []
    for line in iter_utf8_lines(path, stats):
        if line.strip():
            lines.append(line)
        else:
            found.append("".join(lines))
            lines = []
    found.append("".join(lines))
    return [text.strip("\n") for text in found if text.strip()]


LINE_PIECES = st.sampled_from(
    [b"a", b"bc", b" ", b"\t", b"\x0c", b"\r", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xff", b"\xc3\xa9"]
)


@settings(max_examples=300, deadline=None)
@given(content=st.lists(LINE_PIECES, max_size=40).map(b"".join), block_bytes=st.integers(1, 16))
def test_block_reader_equals_the_line_by_line_split(tmp_path_factory, content: bytes, block_bytes: int) -> None:
    path = tmp_path_factory.mktemp("blocks") / "doc.txt"
    path.write_bytes(content)
    expected_stats, stats = SourceStats(), SourceStats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = paragraphs_line_by_line(path, expected_stats)
        whole = "".join(iter_utf8_lines(path, SourceStats()))
        expected_file = [whole.strip("\n")] if whole.strip() else []
        original_block_bytes = sources.TEXT_BLOCK_BYTES
        try:
            sources.TEXT_BLOCK_BYTES = block_bytes
            assert list(iter_documents([str(path)], stats=stats)) == expected
            assert list(iter_documents([str(path)], doc_split="file")) == expected_file
        finally:
            sources.TEXT_BLOCK_BYTES = original_block_bytes
    assert stats.skipped_lines == expected_stats.skipped_lines


def test_folders_skip_hidden_files_and_globs_recurse(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.txt").write_text("zed")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / ".hidden.txt").write_text("secret")
    assert documents(str(tmp_path)) == ["ay", "zed"]
    assert documents(str(tmp_path / "**" / "z.txt")) == ["zed"]
    with pytest.raises(FileNotFoundError, match="matched no files"):
        documents(str(tmp_path / "*.md"))
    with pytest.raises(ValueError, match="--doc_split must be one of"):
        documents(str(tmp_path), doc_split="sentence")


def test_jsonl_text_field(tmp_path: Path) -> None:
    rows = [{"text": "one", "id": 1}, {"text": "two\n", "id": 2}, {"text": "   ", "id": 3}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert documents(str(tmp_path / "rows.jsonl")) == ["one", "two\n"]  # a record's text exactly; blank ones go
    with pytest.raises(ValueError, match=r"rows.jsonl:1: no field 'body' \(found: text, id\); pass --text_field NAME"):
        documents(str(tmp_path / "rows.jsonl"), text_field="body")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match="broken.jsonl:2: not a JSON object per line"):
        documents(str(tmp_path / "broken.jsonl"))


def test_parquet_text_field(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["alpha", None, "beta"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert documents(str(tmp_path / "t.parquet"), text_field="content") == ["alpha", "beta"]
    with pytest.raises(ValueError, match=r"no column 'text' \(found: content, n\)"):
        documents(str(tmp_path / "t.parquet"))


def test_hugging_face_datasets_local_builders(tmp_path: Path) -> None:
    """hf: sources go through `datasets.load_dataset(..., streaming=True)`; its json/parquet builders read local files."""
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"story": f"story {i}"}) for i in range(5)))
    pq.write_table(pa.table({"text": ["p0", "p1"]}), tmp_path / "rows.parquet")
    assert documents("hf:json", text_field="story", data_files=[str(tmp_path / "rows.jsonl")]) == [
        f"story {i}" for i in range(5)
    ]
    assert documents("hf:parquet", data_files=[str(tmp_path / "rows.parquet")]) == ["p0", "p1"]
    with pytest.raises(ValueError, match="row 0: no field 'text' \\(found: story\\)"):
        documents("hf:json", data_files=[str(tmp_path / "rows.jsonl")])


def test_records_keep_their_edge_newlines_in_every_format(tmp_path: Path) -> None:
    """A record's text is the user's data: JSONL, Parquet and hf: sources give it exactly; blank ones are skipped."""
    texts = ["\nstarts with a newline", "ends with one\n", "\n\nboth\n\n", " \n\t", "", "  spaces  "]
    kept = ["\nstarts with a newline", "ends with one\n", "\n\nboth\n\n", "  spaces  "]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    pq.write_table(pa.table({"text": texts}), tmp_path / "rows.parquet")
    assert documents(str(tmp_path / "rows.jsonl")) == documents(str(tmp_path / "rows.parquet")) == kept
    assert documents("hf:parquet", data_files=[str(tmp_path / "rows.parquet")]) == kept


RUN_COMMANDS = """
import contextlib, io, json, sys
from gpt25.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exit_info:
            results.append([exit_info.code, stderr.getvalue()])
print(json.dumps(results))
"""


def run_cli(commands: list[list[str]], env: dict[str, str]) -> list[tuple[int, str]]:
    """Run `gpt25` commands in one fresh interpreter (the Hub libraries read their env vars at import)."""
    result = subprocess.run(
        [sys.executable, "-c", RUN_COMMANDS, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=os.environ | env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [tuple(item) for item in json.loads(result.stdout.strip().splitlines()[-1])]


def test_hub_offline_fails_at_once_or_uses_the_cache(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1: Hub sources fail in one line naming the local alternative; a cached snapshot still downloads."""
    repo = tmp_path / "cache" / "datasets--itskoma--GPT2.5"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "data.txt").write_text("cached")
    commands = [
        ["data", "corpus", "--source", "hf:roneneldan/TinyStories", "--out", str(tmp_path / "x.txt")],
        ["data", "download", "--repo-type", "model"],
        ["data", "download", "--out", str(tmp_path / "out")],
    ]
    hf_source, model_download, cached_download = run_cli(
        commands, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    )
    assert hf_source == (
        2,
        "gpt25 data: error: hf:roneneldan/TinyStories needs the internet and offline mode is on (HF_HUB_OFFLINE); "
        "offline, use local files instead: --source 'DIR/*.jsonl' --text_field text (or --source python-docs, the embedded corpus)\n",
    )
    assert model_download[0] == 2 and len(model_download[1].strip().splitlines()) == 1
    assert (
        "downloading model itskoma/GPT2.5 needs the internet" in model_download[1]
        and "--source DIR" in model_download[1]
    )
    assert cached_download == (0, "") and (tmp_path / "out" / "data.txt").read_text() == "cached"


def test_unreachable_hub_is_one_line(tmp_path: Path) -> None:
    """No offline flag, but the Hub endpoint refuses connections (port 9 on localhost): huggingface_hub's own error."""
    commands = [
        ["data", "corpus", "--source", "hf:roneneldan/TinyStories", "--out", str(tmp_path / "x.txt")],
        ["data", "download"],
    ]
    for code, stderr in run_cli(
        commands, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "cache")}
    ):
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert "needs the internet, and the Hugging Face Hub is unreachable (" in stderr


def test_compressed_files_are_refused(tmp_path: Path) -> None:
    """Workers read byte ranges of the raw file; a .gz would be tokenized as garbage text."""
    import gzip

    (tmp_path / "good.jsonl").write_text('{"text": "one"}\n')
    (tmp_path / "good.jsonl.gz").write_bytes(gzip.compress(b'{"text": "one"}\n'))
    with pytest.raises(ValueError, match=r"good.jsonl.gz is compressed \(.gz\); decompress it first"):
        documents(str(tmp_path / "good.jsonl.gz"))
    with pytest.raises(ValueError, match=r"good.jsonl.gz is compressed"):  # also found in a folder
        sources.check_sources([str(tmp_path)])
    assert documents(str(tmp_path / "*.jsonl")) == ["one"]


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("notepad.txt", "Unicode text\n\nsaved by Notepad\n".encode("utf-16"), "is UTF-16 or UTF-32 text"),
        ("rows.jsonl", '{"text": "x"}\n'.encode("utf-32"), "is UTF-16 or UTF-32 text"),
        ("no_bom.txt", "text without a BOM\n".encode("utf-16-le"), "holds NUL bytes"),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"x" * 100, "holds NUL bytes"),
    ],
    ids=["utf-16", "utf-32-jsonl", "utf-16-without-bom", "png"],
)
def test_binary_and_utf16_files_are_refused(tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    """Serial reads and the workers' byte ranges (from a file's start) both stop with one line naming the file."""
    path = tmp_path / name
    path.write_bytes(data)
    for read in (
        lambda: documents(str(tmp_path)),
        lambda: sources.read_block(path, 0, 4, sources.PARAGRAPH_STARTS_AFTER),
        lambda: sources.read_block(path, 0, 4, sources.LINE_STARTS_AFTER),
    ):
        with pytest.raises(ValueError, match=f"{path} {problem}.*convert it to UTF-8") as error:
            read()
        assert "\n" not in str(error.value)


def test_null_text_is_skipped_and_other_non_strings_refused(tmp_path: Path) -> None:
    """JSONL and Parquet agree: a null text is no document; a number or list is an error, not "123"."""
    (tmp_path / "rows.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": "two"}\n')
    pq.write_table(pa.table({"text": ["one", None, "two"]}), tmp_path / "rows.parquet")
    assert documents(str(tmp_path / "rows.jsonl")) == documents(str(tmp_path / "rows.parquet")) == ["one", "two"]
    for value, kind in ((123, "int"), (["a", "b"], "list"), ({"a": 1}, "dict"), (True, "bool")):
        (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n' + json.dumps({"text": value}) + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl:2: field 'text' is {kind}, not a string; pass --text_field"):
            documents(str(tmp_path / "bad.jsonl"))
    pq.write_table(pa.table({"text": [1, 2], "body": [["a"], None]}), tmp_path / "numbers.parquet")
    with pytest.raises(ValueError, match=r"numbers.parquet: column 'text' holds int64, not strings"):
        documents(str(tmp_path / "numbers.parquet"))
    with pytest.raises(ValueError, match=r"column 'body' holds list<element: string>, not strings"):
        documents(str(tmp_path / "numbers.parquet"), text_field="body")


def test_corrupt_parquet_error_names_the_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["alpha"] * 100}), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'bad.parquet'} is not a readable Parquet file \(Parquet magic"):
        documents(str(tmp_path / "bad.parquet"))
    data = (tmp_path / "good.parquet").read_bytes()
    middle = len(data) // 2
    (tmp_path / "bad.parquet").write_bytes(data[:20] + b"\xff" * (middle - 20) + data[middle:])  # damaged pages
    with pytest.raises(ValueError, match=rf"{tmp_path / 'bad.parquet'} is not a readable Parquet file"):
        documents(str(tmp_path / "bad.parquet"))
