"""gpt25.files: a file or folder is replaced whole or not at all, and gets the mode the umask gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpt25.files import atomic_folder, atomic_path, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_and_folders_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    old_umask = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "naïve\n")
        write_json_atomic(tmp_path / "b.json", {"x": [1, 2]})
        with atomic_folder(tmp_path / "folder") as temporary:
            (temporary / "inside.txt").write_text("x")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "a.txt").read_bytes() == "naïve\n".encode()
    assert (tmp_path / "b.json").read_text() == json.dumps({"x": [1, 2]}, indent=2) + "\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "b.json", "folder"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "a.txt") as temporary:
            temporary.write_text("half")
            raise KeyboardInterrupt
    assert [path.name for path in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_a_folder_is_replaced_whole_or_kept(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_folder(final) as temporary:
            (temporary / "new.txt").write_text("new")
            raise OSError("disk full")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert [path.name for path in final.iterdir()] == ["old.txt"]
    (tmp_path / ".tmp-out").mkdir()  # a leftover of a killed run is cleared
    (tmp_path / ".tmp-out" / "stale.txt").write_text("stale")
    with atomic_folder(final) as temporary:
        (temporary / "new.txt").write_text("new")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert [path.name for path in final.iterdir()] == ["new.txt"]
