"""Where documents come from: local files, Hugging Face datasets, and the embedded Python-docs corpus.

A *source spec* is one string, as given to `gpt25 data prepare --source`:

- ``python-docs``: the embedded corpus (gpt25.data.default_corpus: docstrings of the standard
  library plus ``pydoc_data.topics``), available on every Python installation, no download;
- ``hf:NAME[:CONFIG]``: a Hugging Face dataset, streamed with the `datasets` library;
- anything else: a file, folder (all non-hidden files below it) or glob. ``.jsonl`` / ``.json``
  (one JSON object per line) and ``.parquet`` files yield their ``text_field``; other files are
  plain UTF-8 text, split into documents at blank lines or one document per file. Compressed
  files are refused (decompress them first), and so is a text file whose start shows it is binary
  or UTF-16/UTF-32 (a NUL byte or such a byte-order mark): check_source_file holds these checks.

A record's text (JSONL, Parquet, Hugging Face) is a document exactly as stored, edge newlines
included; only blank (empty or whitespace-only) records and nulls are skipped. Plain text is cut
at blank (whitespace-only) lines, and each paragraph (or whole file) loses its leading and
trailing newlines; blank ones are skipped.

Documents come in a deterministic order from gpt25.data.source_tasks.iter_documents, which reads
text and JSONL files in the byte ranges that parallel workers read; this module checks the sources
and reads their lines, records, Parquet columns and Hub rows.

The Hugging Face Hub (streamed datasets, and the one download behind `gpt25 data download`) needs
the internet unless the libraries read local files (`datasets` packaged builders such as ``json``
/ ``parquet`` with ``data_files``, or a cached snapshot under ``HF_HUB_OFFLINE=1``). Offline it
fails at once with one line that says so and names the local-file alternative, instead of the
libraries' minute of retries.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

DOC_SPLITS = ("blank-line", "file")
JSONL_SUFFIXES = (".jsonl", ".json")
DEFAULT_CORPUS_SPEC = "python-docs"
# Refused by name: workers read byte ranges of the raw file, which a compressed stream does not allow.
COMPRESSED_SUFFIXES = frozenset(
    {".gz", ".tgz", ".bz2", ".xz", ".lzma", ".zst", ".lz4", ".br", ".z", ".zip", ".7z", ".rar", ".tar"}
)
RECIPE_REPO = "itskoma/GPT2.5"
REPO_TYPES = ("dataset", "model")
TRUE_VALUES = ("1", "ON", "YES", "TRUE")
LOCAL_ALTERNATIVE = (
    "offline, use local files instead: --source 'DIR/*.jsonl' --text_field text "
    "(or --source python-docs, the embedded corpus)"
)
DOWNLOAD_ALTERNATIVE = (
    "offline, copy the files by hand and pass local paths, e.g. gpt25 data prepare --source DIR "
    "(or --source python-docs, the embedded corpus)"
)
BINARY_CHECK_BYTES = 8000  # as git does: a NUL in a file's first 8000 bytes makes it binary
UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-32LE's starts with UTF-16LE's
MAX_WARNINGS_PER_FILE = 3


class NonUtf8Warning(UserWarning):
    """A line of a text source was not valid UTF-8 and was skipped."""


@dataclass
class SourceStats:
    """Counters filled while documents are read (reported in the manifest and by the CLI)."""

    skipped_lines: int = 0
    files: int = 0


def check_sources(
    specs: Iterable[str], data_files: list[str] | None = None, exclude: str | os.PathLike | None = None
) -> None:
    """Fail before any work when a local spec matches nothing (or a compressed file) or a Hub dataset
    is unreachable."""
    for spec in specs:
        if spec.startswith("hf:"):
            check_hf_source(spec[3:].partition(":")[0], data_files)
        elif spec != DEFAULT_CORPUS_SPEC:
            expand_paths(spec, exclude)


def source_signature(specs: Iterable[str], exclude: str | os.PathLike | None = None) -> list[list]:
    """[path, size, mtime_ns] of every local file (and the Python version for python-docs), so a rerun
    can tell that the sources changed under it instead of resuming into a wrong dataset."""
    signature: list[list] = []
    for spec in specs:
        if spec == DEFAULT_CORPUS_SPEC:
            signature.append([spec, sys.version])
        elif not spec.startswith("hf:"):
            for path in expand_paths(spec, exclude):
                stat = path.stat()
                signature.append([str(path), stat.st_size, stat.st_mtime_ns])
    return signature


def expand_paths(spec: str, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The files a local spec names: itself, every non-hidden file below a folder, or a glob's matches;
    a folder or glob leaves out the files inside `exclude` (prepare's --out folder, which may lie
    inside a source folder). ValueError for a compressed file."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(path))]
    else:
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if exclude is not None and not path.is_file():
        excluded = Path(os.path.abspath(exclude))
        files = [p for p in files if not Path(os.path.abspath(p)).is_relative_to(excluded)]
    if not files:
        raise FileNotFoundError(
            f"source {spec!r} matched no files; give an existing file, folder or glob, "
            f"'{DEFAULT_CORPUS_SPEC}' or 'hf:NAME[:CONFIG]'"
        )
    for file in files:
        check_source_file(file)
    return sorted(files)


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def check_source_file(path: Path, head: bytes | None = None) -> None:
    """ValueError, one line naming the file, for a source file that cannot be read as it is: a
    compressed one (by its suffix) or, given its first bytes `head` (text sources), a file that is
    not UTF-8: a UTF-16 or UTF-32 byte-order mark, or a NUL byte (a binary file, or UTF-16/UTF-32
    text without a BOM)."""
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        raise ValueError(
            f"source file {path} is compressed ({path.suffix}); decompress it first "
            "(gunzip -k, unxz -k, zstd -d, unzip, ...) or leave it out of --source"
        )
    if head is None:
        return
    if head.startswith(UTF16_32_BOMS):
        raise ValueError(
            f"{path} is UTF-16 or UTF-32 text (it starts with a byte-order mark), not UTF-8; "
            "convert it to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8 FILE > NEW_FILE"
        )
    if b"\0" in head:
        raise ValueError(
            f"{path} holds NUL bytes, so it is a binary file or UTF-16/UTF-32 text, not UTF-8; "
            "convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8) or leave it out of --source"
        )


def open_text_file(path: Path) -> BinaryIO:
    """`path` opened for reading bytes, once check_source_file has passed it and its first bytes."""
    file = open(path, "rb")
    try:
        check_source_file(path, file.read(BINARY_CHECK_BYTES))
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return file


class SkippedLines:
    """Counts the non-UTF-8 lines of one file; warns for the first few, and sums up at the end."""

    def __init__(self, path: Path, stats: SourceStats) -> None:
        self.path, self.stats = path, stats
        self.count = self.first = 0

    def record(self, line_number: int, reason: str) -> None:
        """Count a skipped line (warning for the first MAX_WARNINGS_PER_FILE)."""
        self.count += 1
        self.first = self.first or line_number
        if self.count <= MAX_WARNINGS_PER_FILE:
            warnings.warn(
                f"{self.path}:{line_number}: skipped a line that is not UTF-8 ({reason})", NonUtf8Warning, stacklevel=4
            )

    def close(self) -> None:
        self.stats.skipped_lines += self.count
        if self.count > MAX_WARNINGS_PER_FILE:
            warnings.warn(f"{self.path}: skipped {self.count} lines that are not UTF-8 in all (first at line "
                          f"{self.first})", NonUtf8Warning, stacklevel=3)


def iter_utf8_lines(path: Path, stats: SourceStats) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs with newlines normalised to "\\n"; non-UTF-8 lines are skipped with a warning."""
    bad_lines = SkippedLines(path, stats)
    with open_text_file(path) as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad_lines.record(line_number, error.reason)
                continue
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if line.endswith("\n"):
                line = line.rstrip("\r\n") + "\n"
            yield line_number, line
    bad_lines.close()


def record_documents(line: str, text_field: str) -> list[str]:
    """The document of one JSONL line, its text exactly ([] for a blank line or a null or blank
    text); ValueError saying
    what is wrong with a line that is not an object with `text_field`, or whose field is no string."""
    if not line.strip():
        return []
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a JSON object per line ({error.msg}); JSONL sources need one object per line") from None
    if not isinstance(record, dict) or text_field not in record:
        fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"no field {text_field!r} (found: {fields}); pass --text_field NAME")
    text = record[text_field]
    if text is None:  # as Parquet's nulls
        return []
    if not isinstance(text, str):
        raise ValueError(
            f"field {text_field!r} is {type(text).__name__}, not a string; pass --text_field NAME of a text field"
        )
    return _record_text(text)


def _record_text(text: str) -> list[str]:
    """A record's text as its one document, exactly as stored; [] when it is blank."""
    return [text] if text.strip() else []


def iter_parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` column of a Parquet file (a string column) as documents; nulls and blank texts skipped."""
    for text in iter_parquet_column(path, text_field, "pass --text_field NAME", strings=True):
        if text is not None:
            yield from _record_text(text)


def iter_parquet_column(path: Path, column: str, fix: str, strings: bool = False) -> Iterator[Any]:
    """The values of `column` of a Parquet file, a record batch at a time. One-line errors for an
    unreadable file, a missing column (ending in `fix`) and, with `strings`, a column of another type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        _check_column(path, parquet.schema_arrow, column, fix, strings)
        for batch in parquet.iter_batches(columns=[column], batch_size=1024):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__  # on one line
        raise ValueError(f"{path} is not a readable Parquet file ({reason}); repair or re-export it, "
                         "or leave it out") from None


def _check_column(path: Path, schema, column: str, fix: str, strings: bool) -> None:
    import pyarrow as pa

    if column not in schema.names:
        raise ValueError(f"{path}: no column {column!r} (found: {', '.join(schema.names)}); {fix}")
    column_type = schema.field(column).type
    value_type = column_type.value_type if pa.types.is_dictionary(column_type) else column_type
    text_types = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if strings and not any(is_text(value_type) for is_text in text_types):
        raise ValueError(f"{path}: column {column!r} holds {column_type}, not strings; {fix} of a text column")


# ---- the Hugging Face Hub ----


def hub_offline() -> bool:
    """True when the user switched the Hub off (HF_HUB_OFFLINE, or HF_DATASETS_OFFLINE for `datasets`)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in TRUE_VALUES


def check_hub_reachable(repo_id: str, repo_type: str, what: str, alternative: str = LOCAL_ALTERNATIVE) -> None:
    """Ask the Hub for the repo's info (one fast request) so an offline machine fails at once.

    `datasets` retries for about half a minute before giving up; huggingface_hub's info call
    fails within a second. A missing repo is the user's typo (ValueError); anything else from
    that request means the Hub cannot be reached (ConnectionError).
    """
    if hub_offline():
        raise ConnectionError(f"{what} needs the internet and offline mode is on (HF_HUB_OFFLINE); {alternative}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10)
    except GatedRepoError:
        return  # it exists; `datasets` reports the missing token itself
    except RepositoryNotFoundError:
        raise ValueError(f"no {repo_type} named {repo_id!r} on the Hugging Face Hub; check the name") from None
    except Exception as error:  # the HTTP client's own connect/timeout errors have no common base
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConnectionError(
            f"{what} needs the internet, and the Hugging Face Hub is unreachable ({reason}); {alternative}"
        ) from None


def check_hf_source(name: str, data_files: list[str] | None, alternative: str = LOCAL_ALTERNATIVE) -> None:
    """Fail at once when a Hub dataset cannot be reached; local builders (data_files, a folder) need no check.
    `alternative` names the calling command's own local-file flags."""
    if not data_files and not Path(name).exists():
        check_hub_reachable(name, "dataset", f"hf:{name}", alternative)


def iter_hf_dataset(name: str, config: str | None, text_field: str, *, data_files: list[str] | None = None,
                    split: str = "train") -> Iterator[str]:
    """Stream the `text_field` of a Hugging Face dataset (``hf:NAME[:CONFIG]``), each row's text exactly
    (blank and null ones skipped). With `data_files` (or a local folder as NAME) the dataset is read
    from disk through `datasets`' own builders, e.g. ``hf:json`` with ``--data_files a.jsonl``."""
    for text in iter_hf_field(name, config, text_field, "pass --text_field NAME", data_files=data_files, split=split):
        if text is not None and str(text).strip():
            yield str(text)  # exactly as stored: edge newlines are the user's data


def iter_hf_field(name: str, config: str | None, field: str, fix: str, *, data_files: list[str] | None = None,
                  split: str = "train", alternative: str = LOCAL_ALTERNATIVE) -> Iterator[Any]:
    """Stream `field` of each row of a Hugging Face dataset, failing at once when it is unreachable
    (`alternative` names the local-file flags) and at a row without the field (`fix` says what to do)."""
    check_hf_source(name, data_files, alternative)
    import datasets

    rows = datasets.load_dataset(name, config, data_files=data_files, split=split, streaming=True)
    for row_number, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"hf:{name} row {row_number}: no field {field!r} (found: {', '.join(row)}); {fix}")
        yield row[field]


def download_repo(
    repo_id: str = RECIPE_REPO,
    repo_type: str = "dataset",
    out: str | os.PathLike | None = None,
    include: list[str] | None = None,
    revision: str | None = None,
) -> Path:
    """Download a Hub repo with huggingface_hub (into `out`, else the HF cache); returns its local folder.

    The one Hub download, behind `gpt25 data download` (and its alias `gpt25 export hub-download`,
    for model repos to convert with `gpt25 checkpoint import`). Under HF_HUB_OFFLINE=1 a copy already
    in the Hugging Face cache is used (and copied to `out`).
    """
    if repo_type not in REPO_TYPES:
        raise ValueError(f"--repo_type must be one of {', '.join(REPO_TYPES)}, got {repo_type!r}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    what = f"downloading {repo_type} {repo_id}"
    try:
        if hub_offline():
            cached = Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=include, revision=revision))
            if out is None:
                return cached
            shutil.copytree(cached, out, dirs_exist_ok=True)
            return Path(out)
        check_hub_reachable(repo_id, repo_type, what, DOWNLOAD_ALTERNATIVE)
        return Path(
            snapshot_download(repo_id, repo_type=repo_type, local_dir=out, allow_patterns=include, revision=revision)
        )
    except LocalEntryNotFoundError:
        raise ConnectionError(
            f"{what} needs the internet and offline mode is on (HF_HUB_OFFLINE) with no cached copy; {DOWNLOAD_ALTERNATIVE}"
        ) from None
