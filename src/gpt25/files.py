"""Files and folders a reader never sees half-written: written under a temporary name beside their place and
renamed in once complete. The bottom of the package: every module may import it; it imports nothing of gpt25."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def set_usual_mode(path: str | os.PathLike) -> None:
    """Give `path` the mode open() or mkdir() would have given it under the current umask."""
    umask = os.umask(0)  # the only way to read the umask is to set it: put it straight back
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside `path` for the block to write (by name, with any library); when the
    block succeeds it gets the usual mode and replaces `path`, when it fails it is removed."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        set_usual_mode(temporary)  # mkstemp made it private (0600): give it the mode a plain open() would have
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8, "\\n" line ends) to `path` through atomic_path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented JSON with a final newline, written through atomic_path."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def fresh_temporary(final: Path) -> Path:
    """An empty folder `.tmp-NAME` beside `final` (a leftover one from a killed run is cleared)."""
    temporary = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    return temporary


def replace_folder(temporary: Path, final: Path) -> None:
    """Rename a finished temporary folder onto `final`. POSIX cannot rename onto a non-empty folder,
    so an older `final` is moved aside to `.old-NAME` first (and put back if the rename fails)."""
    if not final.exists():
        os.replace(temporary, final)
        return
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    try:
        os.replace(temporary, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old)


@contextlib.contextmanager
def new_folders(folder: Path) -> Iterator[None]:
    """Create `folder` and its missing parents; when the block fails, remove those it left empty."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in missing:
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                path.rmdir()
        raise


@contextlib.contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A fresh temporary folder for the block to fill; it replaces `final` when the block succeeds
    and is removed (with the parents it needed created) when it fails."""
    with new_folders(final.parent):
        temporary = fresh_temporary(final)
        try:
            yield temporary
            replace_folder(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
