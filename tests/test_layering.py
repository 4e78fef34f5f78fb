"""Data flows one way: the building blocks never import the layers that use them, and the bottom
modules (atomic file writes) import nothing of gpt25, so every module may use them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gpt25"
BUILDING_BLOCKS = ("tokenizer", "data", "model", "optim")
USERS = ("train", "checkpoint", "eval", "sample", "interop", "cli", "demo")
BOTTOM = ("files",)


def module_files(name: str) -> list[Path]:
    package_dir = PACKAGE / name
    if package_dir.is_dir():
        return sorted(package_dir.rglob("*.py"))
    return [PACKAGE / f"{name}.py"]


def imported_gpt25_modules(path: Path) -> set[str]:
    """First component after `gpt25.` of every gpt25 import in the file (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative_base = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = relative_base[: len(relative_base) - node.level]
                names = [".".join((*base, node.module or ""))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "gpt25" and len(parts) > 1 and parts[1]:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("block", BUILDING_BLOCKS)
def test_building_blocks_do_not_import_their_users(block: str) -> None:
    files = module_files(block)
    assert files and all(path.exists() for path in files)
    for path in files:
        forbidden = imported_gpt25_modules(path) & set(USERS)
        assert not forbidden, f"{path.relative_to(PACKAGE)} imports {sorted(forbidden)}"


@pytest.mark.parametrize("layer", ["eval", "sample", "checkpoint"])
def test_eval_and_sampling_do_not_import_the_trainer(layer: str) -> None:
    for path in module_files(layer):
        assert "train" not in imported_gpt25_modules(path), f"{path.relative_to(PACKAGE)} imports gpt25.train"


@pytest.mark.parametrize("module", BOTTOM)
def test_the_bottom_modules_import_nothing_of_gpt25(module: str) -> None:
    files = module_files(module)
    assert files and all(path.exists() for path in files)
    for path in files:
        assert not imported_gpt25_modules(path), f"{path.relative_to(PACKAGE)} imports gpt25 modules"
