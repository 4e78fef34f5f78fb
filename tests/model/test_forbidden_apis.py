"""Everything is hand-written: src/gpt25 may use from torch.nn / torch.optim only the allowed names.

Allowed: nn.Parameter and the containers, torch.optim.Optimizer (the base class), and
torch.nn.functional.scaled_dot_product_attention (the flash path) with torch.nn.attention's choice of
its kernels, and
torch.nn.parallel.DistributedDataParallel (the trainer's DDP option). gpt25.model and its decoding
state (gpt25.engine) must also stay free of torch.distributed so they run unchanged on one device.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "gpt25"
ALLOWED = {
    "torch.nn.Parameter",
    "torch.nn.Module",
    "torch.nn.ModuleList",
    "torch.nn.ModuleDict",
    "torch.nn.Sequential",
    "torch.optim.Optimizer",
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.attention.sdpa_kernel",  # which kernels that SDPA may pick (gpt25.sample leaves out cuDNN's)
    "torch.nn.attention.SDPBackend",
    "torch.nn.parallel.DistributedDataParallel",  # gpt25.train's --parallel ddp (a wrapper, not a layer)
}
GUARDED_PREFIXES = ("torch.nn", "torch.optim")


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path for every import in the tree (e.g. F -> torch.nn.functional)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def dotted_name(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """Resolve `F.gelu` / `torch.nn.Linear` / `nn.Module` to its full dotted path, or None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def is_guarded(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in GUARDED_PREFIXES)


def forbidden_uses(source: str) -> list[str]:
    """Every guarded torch.nn / torch.optim name the source imports or uses that is not allowed."""
    tree = ast.parse(source)
    aliases = import_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            resolved = dotted_name(node, aliases)
            names = [resolved] if resolved else []
        else:
            continue
        for name in names:
            # A module prefix of an allowed name (torch.nn, torch.nn.functional) is fine on its own, and so
            # is a member of an allowed name (SDPBackend.MATH).
            if is_guarded(name) and not any(
                name == allowed or allowed.startswith(name + ".") or name.startswith(allowed + ".")
                for allowed in ALLOWED
            ):
                found.append(f"line {node.lineno}: {name}")
    return found


def test_scanner_catches_forbidden_uses() -> None:
    source = (
        "import torch\nimport torch.nn.functional as F\nfrom torch import nn\nfrom torch.nn import Linear\n"
        "from torch.optim import Optimizer\n"
        "a = F.gelu(x)\nb = torch.nn.functional.softmax(x)\nc = nn.LayerNorm(3)\nd = torch.optim.AdamW([])\n"
        "e = nn.Parameter(x)\nf = F.scaled_dot_product_attention(q, k, v)\nclass A(nn.Module): pass\n"
        "class B(Optimizer): pass\nfrom torch.nn.attention import SDPBackend, sdpa_kernel\n"
        "g = sdpa_kernel([SDPBackend.MATH])\nh = torch.nn.attention.flex_attention.flex_attention(q, k, v)\n"
    )
    found = sorted(item.split(": ")[1] for item in forbidden_uses(source))
    assert found == sorted(
        ["torch.nn.Linear", "torch.nn.functional.gelu", "torch.nn.functional.softmax", "torch.nn.LayerNorm",
         "torch.optim.AdamW", "torch.nn.attention.flex_attention", "torch.nn.attention.flex_attention.flex_attention"]
    )


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_package_uses_only_allowed_torch_nn_and_optim(path: Path) -> None:
    found = forbidden_uses(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(PACKAGE)} uses forbidden torch.nn/torch.optim names: {found}"


def test_model_and_engine_have_no_torch_distributed_import() -> None:
    for path in [*sorted((PACKAGE / "model").rglob("*.py")), PACKAGE / "engine.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m.startswith("torch.distributed") for m in modules), f"{path.name} imports {modules}"
