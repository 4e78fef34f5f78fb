"""The embedded default corpus (source spec ``python-docs``): the docstrings of the Python standard
library, one document per module, plus the help topics of ``pydoc_data.topics``. It needs no
download: every Python installation holds it. Modules are parsed with `ast`, never imported.

Also here: write_corpus_file, which writes documents as one text file for `gpt25 tokenizer train`.
"""

from __future__ import annotations

import ast
import inspect
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from gpt25.files import atomic_path

EOT_TEXT = "<|endoftext|>"
# Folders of the standard library that hold tests, demos of tests or installed third-party code.
SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def iter_default_corpus() -> Iterator[str]:
    """The embedded corpus: one document per standard-library module (its docstrings) and per pydoc topic."""
    yield from iter_stdlib_docstrings()
    yield from iter_pydoc_topics()


def iter_stdlib_docstrings(stdlib: Path | None = None) -> Iterator[str]:
    """Docstrings of each stdlib module, extracted with `ast` (never imported), in sorted path order."""
    for path, module_name in iter_stdlib_modules(stdlib):
        document = module_document(path, module_name)
        if document:
            yield document


def iter_stdlib_modules(stdlib: Path | None = None) -> Iterator[tuple[Path, str]]:
    """(file, dotted module name) of each stdlib module the embedded corpus reads, in sorted path order."""
    stdlib = stdlib or Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if not _skip_stdlib_path(relative):
            yield path, _module_name(relative)


def _skip_stdlib_path(relative: Path) -> bool:
    folders = relative.parts[:-1]
    return (
        any(part in SKIPPED_STDLIB_DIRS or part.startswith(("config-", ".")) for part in folders)
        or relative.parts[0] == "pydoc_data"  # its topics come in as separate documents
    )


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_document(path: Path, module_name: str) -> str:
    """The docstrings of one module as a document, or "" when it has none or cannot be parsed."""
    sections = [f"{heading}\n\n{docstring}" for heading, docstring in module_docstrings(path, module_name)]
    return "\n\n".join(sections)


def module_docstrings(path: Path, module_name: str) -> list[tuple[str, str]]:
    """(heading, docstring) of the module and each class and function in it, e.g. ("json.dumps(obj, *, ...)",
    "Serialize ..."); empty when the file cannot be parsed."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
        return []
    return list(_docstrings(tree, module_name))


def _docstrings(node: ast.AST, qualified_name: str) -> Iterator[tuple[str, str]]:
    """(heading, cleaned docstring) for `node` and every class and function inside it, in source order."""
    docstring = ast.get_docstring(node, clean=False)
    if docstring and docstring.strip():
        yield _heading(node, qualified_name), inspect.cleandoc(docstring)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{qualified_name}.{child.name}")


def _heading(node: ast.AST, qualified_name: str) -> str:
    if isinstance(node, ast.ClassDef):
        return f"class {qualified_name}"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"{qualified_name}({ast.unparse(node.args)})"
    return f"module {qualified_name}"


def iter_pydoc_topics() -> Iterator[str]:
    """The help topics of `pydoc_data.topics` (the language reference behind `help("if")`), sorted by name."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield f"{name}\n\n{text}"


def write_corpus_file(documents: Iterable[str], path: str | os.PathLike) -> tuple[int, int]:
    """Write documents joined by "<|endoftext|>" (for `gpt25 tokenizer train`) atomically; returns
    (docs, bytes). On any error (or Ctrl-C) the temporary file goes and `path` is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give the file to write, e.g. --out {path / 'corpus.txt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    num_documents = num_bytes = 0
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as file:
        for document in documents:
            if num_documents:
                file.write(EOT_TEXT)
            file.write(document)
            num_documents += 1
            num_bytes += len(document.encode("utf-8"))
    return num_documents, num_bytes
