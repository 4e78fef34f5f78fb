"""The README and docs/ stay true: marked code blocks run, relative links resolve, the README stays short.

A code block runs here when the line just above its opening fence is exactly MARKER. Mark only
blocks that run on a CPU in seconds without the network. The marked blocks of one page run in
order, in one fresh folder holding `data/corpus.txt` (a 130 KB English corpus in paragraphs of ten
lines) and GPT-2's `vocab.json` and `merges.txt`, with `gpt25` and `python` on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- runs in tests/test_docs.py -->"
MARKED_BLOCK = re.compile(re.escape(MARKER) + r"\n```(bash|python)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
README_MAX_BYTES = 16_000


def marked_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of each marked block of a page, in order."""
    return MARKED_BLOCK.findall(page.read_text(encoding="utf-8"))


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^```.*?^```$", "", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    titles = re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in titles}


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", target)]


PAGES_WITH_BLOCKS = [page for page in PAGES if marked_blocks(page)]

# What a page's blocks must print, beyond running without an error.
EXPECTED_OUTPUT = {
    "tokenizer.md": lambda stdout: stdout.count("Hello world") == 2,   # the round trip and GPT-2's ids
    "data.md": lambda stdout: "val: 4,347 tokens, 10 documents" in stdout and "all shards verified" in stdout,
}


def test_every_marker_stands_above_a_block_that_runs():
    assert {page.name for page in PAGES_WITH_BLOCKS} >= set(EXPECTED_OUTPUT)
    unmatched = [page.name for page in PAGES
                 if page.read_text(encoding="utf-8").count(MARKER) != len(marked_blocks(page))]
    assert unmatched == [], "a marker must stand on the line just above a ```bash or ```python fence"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: {linked} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {target.partition("#")[0] for target in relative_links(ROOT / "README.md")}
    assert {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} <= linked


def test_readme_stays_short_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) < README_MAX_BYTES
    assert "uv run gpt25 demo" in readme and "uv run pytest" in readme


def readme_block_after(heading: str, language: str = "") -> str:
    """The first fenced block (of `language`, when given) below the README's `heading`."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split(heading, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_demo_transcript_shows_the_demos_own_stages():
    from gpt25.demo import STAGES

    lines = [line for line in readme_block_after("## Two commands", "text").splitlines() if line.startswith("[")]
    shown = [re.match(r"\[(\d+)/(\d+)\] (\w+) done in", line).groups() for line in lines]
    assert shown == [(str(number), str(len(STAGES)), name) for number, name in enumerate(STAGES, start=1)]


def test_the_workflow_uses_each_run_after_the_step_that_makes_it():
    made = set()
    for line in readme_block_after("## The real workflow, at full scale").splitlines():
        used = re.findall(r"--checkpoint (runs/[\w-]+)", line)
        assert set(used) <= made, f"{line!r} uses a run that no earlier step makes"
        made |= set(re.findall(r"--out (runs/[\w-]+)", line))


def test_the_layout_lists_every_package_and_module():
    layout = readme_block_after("## Layout")
    listed = set(re.findall(r"^  ([\w.]+/?)", layout, re.M))
    package = ROOT / "src" / "gpt25"
    present = {f"{path.name}/" for path in package.iterdir() if (path / "__init__.py").is_file()}
    present |= {path.name for path in package.glob("*.py") if not path.name.startswith("__")}
    assert present <= listed, present - listed


@pytest.fixture
def workspace(shared_data, tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    lines = (shared_data / "fixtures" / "corpus.en").read_text(encoding="utf-8").splitlines(keepends=True)
    paragraphs = ["".join(lines[start:start + 10]) for start in range(0, len(lines), 10)]
    (tmp_path / "data" / "corpus.txt").write_text("\n".join(paragraphs), encoding="utf-8")
    (tmp_path / "vocab.json").write_bytes((shared_data / "gpt2" / "gpt2_vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_bytes((shared_data / "gpt2" / "gpt2_merges.txt").read_bytes())
    return tmp_path


def run_block(language: str, code: str, folder: Path) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = ["bash", "-e", "-o", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    return subprocess.run(command, cwd=folder, capture_output=True, timeout=300, check=False,
                          env={**os.environ, "PATH": path})


@pytest.mark.parametrize("page", PAGES_WITH_BLOCKS, ids=lambda page: page.name)
def test_marked_blocks_run(page, workspace):
    stdout = ""
    for language, code in marked_blocks(page):
        result = run_block(language, code, workspace)
        assert result.returncode == 0, f"{page.name}:\n{code}\n{result.stderr.decode()}"
        stdout += result.stdout.decode()
    assert EXPECTED_OUTPUT.get(page.name, lambda _: True)(stdout), stdout
