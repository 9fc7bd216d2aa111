"""The import graph of ``src/slimformer`` keeps its layers one way (built with ``ast``, no imports run).

Layers, bottom first (a module may import its own package and any lower layer, never a higher one):

    0  runtime (shipped with every saved model), and leaf utilities: _version, _lazy, validate, memory
    1  arch          adapters as data
    2  core          exact transforms (fusion, rotation, plans, structures)
    3  io            saved format, safe outputs, bits-back storage
    4  calib, schedule, data   layer-at-a-time calibration passes, budgets, text
    5  methods, eval
    6  finetune_config, api
    7  finetune
    8  cli_options   CLI options generated from the config dataclasses
    9  cli
    10 the package itself (``slimformer/__init__.py``: lazy public names)

Function-level (lazy) imports count like module-level ones. Also: no import cycles between
modules, and no module imports a private name (``_x``) of another top-level package.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "slimformer"

LAYERS = {
    "runtime": 0, "_version": 0, "_lazy": 0, "validate": 0, "memory": 0,
    "arch": 1,
    "core": 2,
    "io": 3,
    "calib": 4, "schedule": 4, "data": 4,
    "methods": 5, "eval": 5,
    "finetune_config": 6, "api": 6,
    "finetune": 7,
    "cli_options": 8,
    "cli": 9,
    "": 10,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or '', line)`` for every slimformer import in the file."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            if not target.startswith("slimformer"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, "", node.lineno) if sub in modules else (target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("slimformer")]
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, str, int]]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_top_level_module_has_a_layer(graph) -> None:
    missing = sorted({_top(m) for m in graph} - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS (and the docstring): {missing}"


def test_no_upward_imports(graph) -> None:
    bad = []
    for mod, imports in graph.items():
        for target, _, line in imports:
            a, b = _top(mod), _top(target)
            if a != b and LAYERS.get(b, 99) >= LAYERS.get(a, -1):
                bad.append(f"{mod}:{line} imports {target} (layer {a or 'slimformer'}={LAYERS.get(a)} -> "
                           f"{b or 'slimformer'}={LAYERS.get(b)})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_private_names_across_packages(graph) -> None:
    bad = [f"{mod}:{line} imports {name} from {target}"
           for mod, imports in graph.items() for target, name, line in imports
           if name.startswith("_") and not name.startswith("__") and _top(mod) != _top(target)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles(graph) -> None:
    """Tarjan's strongly connected components over modules (a package imports its ``__init__``)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, imports in graph.items():
        for target, _, _ in imports:
            if target != mod and target in graph:
                edges[mod].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # recursive Tarjan: the graph is ~100 modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # a package __init__ re-exporting its submodules while they import siblings through it is not a cycle
    # worth failing on only if it spans modules outside that package
    real = [c for c in cycles if len({".".join(m.split(".")[:2]) for m in c}) > 1 or not _init_only(c)]
    assert not real, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in real)


def _init_only(component: list[str]) -> bool:
    """A cycle inside one package that only runs through its ``__init__`` (lazy re-exports)."""
    inits = [m for m in component if (PKG.parent / m.replace(".", "/") / "__init__.py").exists()]
    return len(inits) == 1 and all(m.startswith(inits[0]) for m in component)
