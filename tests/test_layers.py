"""The import rule of ARCHITECTURE.md, checked on the source: no module imports a layer above its own, no
two modules import each other (directly or round a loop), the sweeper packages form no loop, and every
module of the tree is in the layer table and in ARCHITECTURE.md.

Imports are read with `ast` (no module is imported): every `import` and `from ... import` of a project
module counts, at the top, inside a function or under `if TYPE_CHECKING:` alike.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sweeper", "analysis", "hydra_plugins")

# Low to high: a module may import modules of its own layer or of a lower one. A name matches a module and
# everything under it; the longest match wins. Kept equal to ARCHITECTURE.md's "Layers" list.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "sweeper",
            "sweeper.interrupt",
            "sweeper.memory",
            "sweeper.store.atomic",
            "sweeper.evaluation.metrics",
        ),
    ),
    ("schema", ("sweeper.config", "sweeper.progress", "sweeper.console")),
    ("inputs", ("sweeper.data", "sweeper.models", "sweeper.training.tokens")),
    ("derived and checks", ("sweeper.config.derived", "sweeper.checks")),
    ("store", ("sweeper.store", "sweeper.tracking", "sweeper.search", "sweeper.halving")),
    ("training", ("sweeper.training",)),
    ("evaluation", ("sweeper.evaluation",)),
    ("lifecycle", ("sweeper.trial",)),
    (
        "entry points and views",
        (
            "sweeper.__main__",
            "sweeper.evaluation.__main__",
            "sweeper.confirm",
            "sweeper.world",
            "analysis",
            "hydra_plugins",
        ),
    ),
]
SWEEPER_PACKAGES = ("config", "data", "training", "store", "evaluation")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module `name` refers to (a module, or the package whose attribute it is)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from package import module` imports that module; `from module import name`, the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for imported in names:
            target = _target(imported) if imported.split(".")[0] in PACKAGES else None
            if target is not None and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for rank, (_, names) in enumerate(LAYERS):
        for prefix in names:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert upward == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of `graph` (its nodes in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_loop_between_modules():
    assert _cycle(GRAPH) is None


def _package(module: str) -> str:
    """sweeper's sub-package of a module (config, data, ...), else the module itself. A leaf (a module that
    imports no project module, e.g. the metric registry every layer reads) is its own node: it closes no loop."""
    parts = module.split(".")
    inside = parts[0] == "sweeper" and len(parts) > 2 and parts[1] in SWEEPER_PACKAGES
    return parts[1] if inside and GRAPH.get(module) else module


def test_no_import_loop_between_the_sweeper_packages():
    """config/, data/, training/, store/, evaluation/ (through any module in between) import no loop."""
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        if module.startswith("sweeper.") and not module.startswith(("sweeper.__main__", "sweeper.world")):
            own = _package(module)
            packages.setdefault(own, set()).update(_package(t) for t in targets if _package(t) != own)
    assert _cycle(packages) is None


def test_the_checker_sees_an_upward_import_and_a_loop():
    """The checks above can fail: an upward edge and a two-module loop are found."""
    assert layer_of("sweeper.trial") > layer_of("sweeper.training.inversion")
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert "sweeper.training.inversion" in GRAPH["sweeper.trial"]


@pytest.mark.parametrize(
    "module", [m for m in MODULES if m.startswith("sweeper.") and not m.startswith("sweeper.world.")]
)
def test_architecture_names_every_module(module):
    """ARCHITECTURE.md matches the tree: every module of sweeper/ is in its table."""
    path = MODULES[module].relative_to(ROOT / "sweeper").as_posix()
    if path.endswith("__init__.py") and path != "__init__.py":
        return  # the packages' empty __init__.py files
    assert f"`{path}`" in (ROOT / "ARCHITECTURE.md").read_text(), f"ARCHITECTURE.md does not name {path}"
