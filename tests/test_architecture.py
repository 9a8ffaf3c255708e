"""The tree shows the architecture: imports point one way, from the CLI down to the foundation.

Each top-level module and sub-package of batch_runner has a layer; a module may import from its own
package and from lower layers, never from a higher one or a sibling of the same layer. A module that
is in no layer fails here, so a new one is placed on purpose (docs/architecture.md says where).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batch_runner"

# Lowest first. Members of one layer may not import each other (except within one sub-package).
LAYERS: list[set[str]] = [
    {"errors"},
    {"logs", "atomic", "records"},
    {"storage"},
    {"config"},
    {"config_doc"},
    {"engines"},
    {"inputs"},
    {"output"},
    {"observe"},
    {"runner"},
    {"plan", "executors"},
    {"api"},
    {"__init__"},
    {"cli", "__main__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def _unit(module: str) -> str:
    """The top-level module or sub-package a module belongs to ('batch_runner' alone is __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Modules of batch_runner imported anywhere in the file (lazy imports inside functions count)."""
    package = list(path.relative_to(PACKAGE.parent).parent.parts)  # what a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("batch_runner")}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: {d for d in _imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module):
    assert _unit(module) in LAYER, f"{module}: add its package or module to LAYERS (docs/architecture.md)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    unit = _unit(module)
    wrong = [d for d in GRAPH[module]
             if _unit(d) != unit and (LAYER.get(_unit(d), 99) >= LAYER.get(unit, -1))]
    assert not wrong, f"{module} imports {wrong}, which are not below it"


def test_no_import_cycle():
    seen: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(GRAPH[m]):
            if seen.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [m, d]))
            if d not in seen:
                visit(d, path + [m])
        seen[m] = 2

    for m in sorted(GRAPH):
        if m not in seen:
            visit(m, [])


def test_only_engines_import_vllm():
    outside = []
    for module, path in MODULES.items():
        if _unit(module) == "engines":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            outside += [f"{module}: {n}" for n in names if n == "vllm" or n.startswith("vllm.")]
    assert not outside, outside
