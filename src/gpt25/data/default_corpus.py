"""The embedded data sets, built from what every Python installation holds (no download): the corpus
`python-docs` (one document per stdlib module's docstrings, and per pydoc topic; write_corpus_file) and the
chat set `python-docs-chat` (iter_chat_set). Manual: docs/data.md (Sources), docs/chat.md (The embedded chat set).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import inspect
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from gpt25.files import atomic_path
from gpt25.tokenizer.codec import END_OF_TEXT

CHAT_SET_SPEC = "python-docs-chat"
MAX_ANSWER_CHARS = 600
SYSTEM_PROMPTS = (
    "You are a helpful assistant who knows the Python standard library.",
    "Answer questions about Python briefly and precisely.",
    "You are a Python documentation assistant.",
)
# A docstring that starts with one of these verbs says what to do: it also answers "How do I ...?".
IMPERATIVE_VERBS = frozenset(
    "return create get convert copy remove read write open close compute calculate check test find make parse "
    "format encode decode split join set add delete send run load dump build generate start stop wait change "
    "rename move search replace compress decompress sort print register escape quote normalize shuffle choose "
    "list count extract call apply update insert append clear reset initialize save restore fetch".split()
)
_PARAGRAPH_END = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
# Folders of the standard library that hold tests, demos of tests or installed third-party code.
SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def iter_default_corpus() -> Iterator[str]:
    yield from iter_stdlib_docstrings()
    yield from iter_pydoc_topics()


def iter_stdlib_docstrings(stdlib: Path | None = None) -> Iterator[str]:
    """Docstrings of each stdlib module, extracted with `ast` (never imported), in sorted path order."""
    for path, module_name in iter_stdlib_modules(stdlib):
        sections = [f"{heading}\n\n{docstring}" for heading, docstring in module_docstrings(path, module_name)]
        if sections:
            yield "\n\n".join(sections)


def iter_stdlib_modules(stdlib: Path | None = None) -> Iterator[tuple[Path, str]]:
    """(file, dotted module name) of each stdlib module the embedded corpus reads, in sorted path order."""
    stdlib = stdlib or Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        skipped_folder = any(part in SKIPPED_STDLIB_DIRS or part.startswith(("config-", ".")) for part in relative.parts[:-1])
        if skipped_folder or relative.parts[0] == "pydoc_data":  # pydoc_data's topics come in as separate documents
            continue
        parts = relative.with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_docstrings(path: Path, module_name: str) -> list[tuple[str, str]]:
    """(heading, docstring) of the module and each class and function in it, e.g. ("json.dumps(obj, *, ...)",
    "Serialize ..."); empty when the file cannot be parsed."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
        return []
    return list(_docstrings(tree, module_name))


def _docstrings(node: ast.AST, qualified_name: str) -> Iterator[tuple[str, str]]:
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
    """Write documents joined by "<|endoftext|>" atomically (for `gpt25 tokenizer train`); returns (docs, bytes)."""
    num_documents = num_bytes = 0
    with open_out_file(path, "corpus.txt") as file:
        for document in documents:
            if num_documents:
                file.write(END_OF_TEXT)
            file.write(document)
            num_documents += 1
            num_bytes += len(document.encode("utf-8"))
    return num_documents, num_bytes


@contextlib.contextmanager
def open_out_file(path: str | os.PathLike, example_name: str) -> Iterator[TextIO]:
    """--out `path` open for writing UTF-8 text through atomic_path; a folder is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give the file to write, e.g. --out {path / example_name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as file:
        yield file


# ---- the chat set ----

def iter_chat_set() -> Iterator[list[dict]]:
    """The conversations (lists of {"role", "content"} messages) of the embedded chat set, in a fixed order."""
    for path, module_name in iter_stdlib_modules():
        if _is_private(module_name):
            continue
        yield from _conversations(_module_questions(module_docstrings(path, module_name)))
    yield from _conversations(_topic_questions())


def _conversations(pairs: list[tuple[str, str]]) -> Iterator[list[dict]]:
    """Question/answer pairs grouped into conversations: one pair each, or (by hash) two or three in a row."""
    index = 0
    while index < len(pairs):
        question = pairs[index][0]
        # every choice is a hash of the text, not a random draw: the same set on every run of one Python version
        turns = 1 + text_hash(question) % 3 if text_hash(question) % 4 == 0 else 1
        messages = [{"role": "system", "content": SYSTEM_PROMPTS[text_hash(question) % len(SYSTEM_PROMPTS)]}] \
            if text_hash(question + "system") % 3 == 0 else []
        for asked, answer in pairs[index:index + turns]:
            messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]
        index += turns
        yield messages


def _module_questions(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for heading, docstring in entries:
        summary = first_paragraph(docstring)
        kind, _, rest = heading.partition(" ")
        if kind == "module" and summary:
            pairs.append((f"What is the `{rest}` module for?", f"`{rest}` is a standard-library module. {summary}"))
        elif kind == "class" and summary and not _is_private(rest):
            module = rest.rsplit(".", 1)[0]
            pairs.append((f"What is `{rest}`?", f"`{rest}` is a class of `{module}`. {summary}"))
        elif "(" in heading and summary and not _is_private(heading.partition("(")[0]):
            pairs += _function_questions(heading, summary)
    return pairs


def _function_questions(heading: str, summary: str) -> list[tuple[str, str]]:
    name, _, arguments = heading[:-1].partition("(")  # the heading ends with ")"
    pairs = [(f"What does `{name}` do?", f"`{name}({arguments})`: {summary}"),
             (f"What arguments does `{name}` take?", describe_arguments(name, arguments))]
    first_word, _, task = _SENTENCE_END.split(summary, 1)[0].rstrip(".").partition(" ")
    verb = first_word.lower()
    verb = verb[:-1] if verb.endswith("s") and verb[:-1] in IMPERATIVE_VERBS else verb  # "Returns" -> "return"
    if verb in IMPERATIVE_VERBS and task:
        pairs.append((f"How do I {verb} {task}?", f"Use `{name}({arguments})`. {summary}"))
    return pairs


def describe_arguments(name: str, arguments: str) -> str:
    """A sentence naming a function's parameters, which are optional (with their defaults) and keyword-only."""
    try:
        parsed = ast.parse(f"def f({arguments}): pass").body[0].args
    except SyntaxError:
        return f"Its signature is `{name}({arguments})`."
    positional = parsed.posonlyargs + parsed.args
    defaults = [None] * (len(positional) - len(parsed.defaults)) + parsed.defaults
    parts = [_parameter(arg.arg, default) for arg, default in zip(positional, defaults, strict=True)
             if arg.arg not in ("self", "cls")]
    if parsed.vararg:
        parts.append(f"any number of extra positional arguments (`*{parsed.vararg.arg}`)")
    parts += [_parameter(arg.arg, default) + " (keyword-only)"
              for arg, default in zip(parsed.kwonlyargs, parsed.kw_defaults, strict=True)]
    if parsed.kwarg:
        parts.append(f"any keyword arguments (`**{parsed.kwarg.arg}`)")
    if not parts:
        return f"`{name}` takes no arguments."
    return f"`{name}({arguments})` takes {_join(parts)}."


def _parameter(name: str, default: ast.expr | None) -> str:
    return f"`{name}`" if default is None else f"`{name}` (optional, default `{ast.unparse(default)}`)"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _topic_questions() -> list[tuple[str, str]]:
    """One question per pydoc topic with a title line, e.g. 'Explain the "if" statement in Python.'"""
    pairs = []
    for document in iter_pydoc_topics():
        lines = document.partition("\n\n")[2].splitlines()  # the topic's text, after its name
        if len(lines) > 2 and set(lines[1]) <= set("*=-") and lines[1]:
            title, body = lines[0].strip(), "\n".join(lines[2:])
            answer = first_paragraph(body)
            if title and answer:
                pairs.append((f"Explain {title[0].lower()}{title[1:]} in Python.", answer))
    return pairs


def first_paragraph(text: str) -> str:
    """The text up to its first blank line, on one line, cut after a sentence near MAX_ANSWER_CHARS."""
    paragraph = " ".join(_PARAGRAPH_END.split(text.strip(), 1)[0].split())
    if len(paragraph) <= MAX_ANSWER_CHARS:
        return paragraph
    cut = paragraph[:MAX_ANSWER_CHARS]
    sentence_end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[:sentence_end + 1] if sentence_end > 0 else cut.rsplit(" ", 1)[0] + " ..."


def _is_private(dotted_name: str) -> bool:
    return any(part.startswith("_") for part in dotted_name.split("."))


def text_hash(text: str) -> int:
    """64 bits of the text's SHA-256: the same on every run and machine (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
