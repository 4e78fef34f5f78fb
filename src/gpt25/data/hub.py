"""The Hugging Face Hub for data and models: streamed datasets and the one download (`gpt25 data download`).

Both need the internet unless they read local files through the libraries' own local paths
(`datasets` packaged builders such as ``json`` / ``parquet`` with ``data_files``, or a cached
snapshot under ``HF_HUB_OFFLINE=1``). Offline they fail at once with one line that says so and
names the local-file alternative, instead of the libraries' minute of retries.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
