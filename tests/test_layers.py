"""The package's layers: every import statement in superres/ (module-level and function-local, and
the lazy_function / lazy_module stand-ins) points at its own layer or one below it, the graph has no
cycle, and only the apps import argparse.

Layers, bottom to top. A module may import from its own subpackage and from any lower layer; two
subpackages on one rank may not import each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "superres"

LAYERS = {
    "superres._lazy": -1, "superres._version": -1,   # helpers every layer may use
    "superres.archs": 0, "superres.io": 0,
    "superres.data": 1,
    "superres.inference": 2,
    "superres.evaluation": 3,
    "superres.training": 4,
    "superres.apps": 5,
    # the package facade and `python -m superres` sit on top: nothing imports them
    "superres": 6, "superres.__main__": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def layer_of(module: str) -> tuple[str, int]:
    """(the layer's name, its rank): the longest LAYERS key that module is or lies under."""
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in {__file__}")
    return best, LAYERS[best]


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Every superres module (or the top module of another package) `module` imports, anywhere."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("lazy_module", "lazy_function")
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
    return found


def _edges() -> dict[str, set[str]]:
    edges = {}
    for m in MODULES:
        targets = set()
        for t in imports_of(m):
            while t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t != m and t.split(".")[0] == "superres":
                targets.add(t)
        edges[m] = targets
    return edges


def test_every_module_is_in_a_layer():
    for m in MODULES:
        layer_of(m)


def test_no_import_points_up_or_sideways():
    bad = []
    for m, targets in _edges().items():
        name, rank = layer_of(m)
        for t in targets:
            tname, trank = layer_of(t)
            # a package's __init__ may name its own submodules; else: same layer or lower ones only
            if tname == name or t == m:
                continue
            if trank >= rank:
                bad.append(f"{m} ({name}, {rank}) imports {t} ({tname}, {trank})")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_the_import_graph_has_no_cycle():
    edges = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            # a package importing its own submodule (lazy re-exports) is not a cycle of code
            if t.startswith(m + ".") and MODULES[m].name == "__init__.py":
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_only_the_apps_import_argparse():
    users = sorted(m for m in MODULES if "argparse" in imports_of(m))
    assert users and all(layer_of(m)[0] == "superres.apps" for m in users), users


def test_the_checks_have_teeth():
    """The helpers see function-local and relative imports (what the tests above rely on)."""
    assert "superres.data.calibration" in imports_of("superres.inference.int8")   # module level, relative
    assert "superres.apps.filejob" in imports_of("superres.apps.cluster")         # inside a method
    assert layer_of("superres.training.loop") == ("superres.training", 4)
    assert layer_of("superres.inference.weights")[1] > layer_of("superres.data.degrade")[1]
