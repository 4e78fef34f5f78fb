"""Data flows one way: the building blocks never import the layers that use them, the bottom modules
(atomic file writes) import nothing of gpt25, so every module may use them, and gpt25.model's own
modules import each other in one order, without a circle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gpt25"
BUILDING_BLOCKS = ("tokenizer", "data", "model", "optim")
USERS = ("engine", "train", "checkpoint", "eval", "sample", "chat", "interop", "cli", "demo", "serve")
BOTTOM = ("files",)


def module_files(name: str) -> list[Path]:
    package_dir = PACKAGE / name
    if package_dir.is_dir():
        return sorted(package_dir.rglob("*.py"))
    return [PACKAGE / f"{name}.py"]


def imported_gpt25_names(path: Path) -> set[str]:
    """Dotted name of every gpt25 module the file imports anywhere in it, relative imports resolved;
    `from gpt25.x import y` counts gpt25.x.y when y is a module of its own, and gpt25.x unless all such."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    relative_base = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = relative_base[: len(relative_base) - node.level]
                module = ".".join((*base, node.module) if node.module else base)
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names if is_module(f"{module}.{alias.name}")}
            found.update(submodules if len(submodules) == len(node.names) else {module, *submodules})
    return {name for name in found if name.split(".")[0] == "gpt25"}


def is_module(dotted_name: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted_name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_gpt25_modules(path: Path) -> set[str]:
    """First component after `gpt25.` of every gpt25 import in the file (relative ones resolved)."""
    parts = [name.split(".") for name in imported_gpt25_names(path)]
    return {name_parts[1] for name_parts in parts if len(name_parts) > 1 and name_parts[1]}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_cycle(package: str) -> list[str]:
    """One cycle of imports between the modules of gpt25.`package` (its __init__ included), or []."""
    files = {module_name(path): path for path in module_files(package)}
    imports = {name: imported_gpt25_names(path) & set(files) - {name} for name, path in files.items()}
    path_so_far: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str]:
        if name in path_so_far:
            return [*path_so_far[path_so_far.index(name) :], name]
        if name in done:
            return []
        path_so_far.append(name)
        for imported in sorted(imports[name]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path_so_far.pop()
        done.add(name)
        return []

    for name in sorted(files):
        cycle = visit(name)
        if cycle:
            return cycle
    return []


@pytest.mark.parametrize("block", BUILDING_BLOCKS)
def test_building_blocks_do_not_import_their_users(block: str) -> None:
    files = module_files(block)
    assert files and all(path.exists() for path in files)
    for path in files:
        forbidden = imported_gpt25_modules(path) & set(USERS)
        assert not forbidden, f"{path.relative_to(PACKAGE)} imports {sorted(forbidden)}"


def test_the_engine_sits_just_above_the_model() -> None:
    """The decoding state uses the model (which does not know it) and none of the layers that drive it."""
    imported = imported_gpt25_modules(PACKAGE / "engine.py")
    assert "model" in imported and imported <= set(BUILDING_BLOCKS), f"gpt25.engine imports {sorted(imported)}"


@pytest.mark.parametrize("layer", ["eval", "sample", "checkpoint", "engine"])
def test_eval_and_sampling_do_not_import_the_trainer(layer: str) -> None:
    for path in module_files(layer):
        assert "train" not in imported_gpt25_modules(path), f"{path.relative_to(PACKAGE)} imports gpt25.train"


def test_serving_sits_on_sampling_chat_and_checkpoints_and_nothing_but_the_cli_imports_it() -> None:
    for path in module_files("serve"):
        imported = imported_gpt25_modules(path)
        assert imported <= {"serve", "sample", "chat", "engine", "checkpoint", *BUILDING_BLOCKS}, f"{path} imports {imported}"
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name not in ("serve", "cli"):
            assert "serve" not in imported_gpt25_modules(path), f"{path.relative_to(PACKAGE)} imports gpt25.serve"


@pytest.mark.parametrize("module", BOTTOM)
def test_the_bottom_modules_import_nothing_of_gpt25(module: str) -> None:
    files = module_files(module)
    assert files and all(path.exists() for path in files)
    for path in files:
        assert not imported_gpt25_modules(path), f"{path.relative_to(PACKAGE)} imports gpt25 modules"


def test_the_model_package_has_no_import_cycle() -> None:
    """Its modules stand in one order (config, decoding, layers, attention, transformer), each importing only
    earlier ones; imports made only for type checking count too, since a reader follows them just the same."""
    cycle = import_cycle("model")
    assert not cycle, "gpt25.model imports in a circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "gpt25" / "toy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from gpt25.toy.a import A\n")
    (package / "a.py").write_text("from gpt25.toy.c import C\nA = 1\n")
    (package / "c.py").write_text("from . import b\nC = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "gpt25")
    type_checking_import = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gpt25.toy.a import A\n"
    (package / "b.py").write_text(type_checking_import)
    assert import_cycle("toy") == ["gpt25.toy.a", "gpt25.toy.c", "gpt25.toy.b", "gpt25.toy.a"]
    (package / "b.py").write_text("from gpt25.toy import A\n")  # through the package's __init__
    assert import_cycle("toy") == ["gpt25.toy", "gpt25.toy.a", "gpt25.toy.c", "gpt25.toy.b", "gpt25.toy"]
    (package / "b.py").write_text("B = 1\n")
    assert import_cycle("toy") == []
