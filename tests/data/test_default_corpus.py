"""The embedded python-docs corpus: stdlib docstrings and pydoc topics, and the corpus file writer."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest

from gpt25.data.default_corpus import iter_default_corpus, iter_stdlib_docstrings, write_corpus_file
from gpt25.data.sources import iter_documents


def test_stdlib_extraction_skips_tests_and_bad_files(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(
        '"""Module doc."""\nclass K:\n    """Class doc."""\n    def f(self, x=1):\n        """Method\n        doc."""\n'
    )
    (tmp_path / "latin.py").write_bytes('# -*- coding: latin-1 -*-\n"""Caf\xe9 doc."""\n'.encode("latin-1"))
    (tmp_path / "broken.py").write_text('"""Never seen."""\ndef (:\n')
    (tmp_path / "nodoc.py").write_text("x = 1\n")
    for folder in ("test", "site-packages", "idlelib/idle_test"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "m.py").write_text('"""Skipped."""\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('"""Package doc."""\n')
    assert list(iter_stdlib_docstrings(tmp_path)) == [
        "module good\n\nModule doc.\n\nclass good.K\n\nClass doc.\n\ngood.K.f(self, x=1)\n\nMethod\ndoc.",
        "module latin\n\nCafé doc.",
        "module pkg\n\nPackage doc.",
    ]


@pytest.fixture(scope="module")
def default_corpus() -> list[str]:
    return list(iter_default_corpus())


def test_embedded_corpus(default_corpus: list[str], tmp_path: Path) -> None:
    names = [document.split("\n", 1)[0] for document in default_corpus]
    assert len(default_corpus) > 500 and sum(map(len, default_corpus)) > 1_500_000
    assert "module json" in names and "module email.mime.text" in names and "if" in names
    assert not any(name.startswith(("module test.", "module idlelib.idle_test")) for name in names)
    assert len(set(names)) == len(names) and all(document.strip() for document in default_corpus)
    assert write_corpus_file(default_corpus[:3], tmp_path / "c.txt")[0] == 3
    assert (tmp_path / "c.txt").read_text(encoding="utf-8").split("<|endoftext|>") == default_corpus[:3]
    assert list(islice(iter_documents(["python-docs"]), 20)) == default_corpus[:20]


def test_corpus_file_leaves_nothing_behind_on_errors(tmp_path: Path) -> None:
    def interrupted():
        yield "one"
        raise KeyboardInterrupt

    (tmp_path / "corpus.txt").write_text("earlier")
    with pytest.raises(KeyboardInterrupt):
        write_corpus_file(interrupted(), tmp_path / "corpus.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]
    assert (tmp_path / "corpus.txt").read_text() == "earlier"
    with pytest.raises(IsADirectoryError, match=rf"--out {tmp_path} is a folder; give the file to write"):
        write_corpus_file(["x"], tmp_path)
