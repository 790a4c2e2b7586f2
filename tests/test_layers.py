"""The package's one direction of flow (README, Layout): a module imports only from its own part or
from parts below it, so there are no cycles and the CLI stays a thin layer on top."""

from __future__ import annotations

import ast
from pathlib import Path

import shiftbench

ROOT = Path(shiftbench.__file__).parent
# Parts of the package, lowest first; parts of one rank do not import each other.
RANK = {"images": 0, "fsutil": 0, "datasets": 0, "embedding": 1, "search": 2, "properties": 3, "scoring": 4,
        "explain": 5, "collection": 6, "training": 6, "reports": 7, "bank": 8, "api": 9, "demo": 10, "cli": 11}


def _imports(path: Path) -> set[str]:
    """The parts of shiftbench that a module imports (``__init__`` and ``__version__`` left out)."""
    here = path.relative_to(ROOT).with_suffix("").parts
    package = list(here[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            found |= {target[0]} if target else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shiftbench."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("shiftbench.")}
    return found - {"__version__", "__init__"}


def test_every_part_has_a_rank():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.stem != "__init__"}
    assert parts == set(RANK)


def test_imports_flow_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        part = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if part == "__init__":  # the package root only re-exports, lazily
            continue
        for target in _imports(path) - {part}:
            if RANK[target] >= RANK[part]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong
