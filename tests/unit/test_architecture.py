"""The layers of docs/architecture.md, enforced: core -> services -> presentation, no cycles,
no private names across modules, no Ray or MLflow in the science core.

Every ``import`` in the package is read from the source (module level and inside functions;
``if TYPE_CHECKING:`` blocks are annotations, not dependencies), so a lazy import cannot hide
an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "grokray"

#: Module (or package prefix) -> layer. Order matters: the first matching prefix wins.
LAYERS = [
    # presentation: what a user reads (tables, maps, the command line); packages: every module in them
    ("grokray.cli", "presentation"), ("grokray.__main__", "presentation"), ("grokray.phasemap", "presentation"),
    ("grokray.transfermap", "presentation"),
    # services: MLflow (grokray.tracking: store, runs, views, runlogger), the classifier service, the
    # MLflow server, sweeps on Ray
    ("grokray.tracking", "services"), ("grokray.sqlite_store", "services"), ("grokray.classify", "services"),
    ("grokray.server", "services"), ("grokray.sweep", "services"),
    # core: the science, plain config objects in, plain results out; the MLflow contract's names
    # (no MLflow import: the core may use them) and the shared formatters
    ("grokray.contract", "core"), ("grokray.fmt", "core"), ("grokray.errors", "core"),
    ("grokray", "core"),
]
RANK = {"core": 0, "services": 1, "presentation": 2}
#: Packages only the service layer may import.
SERVICE_ONLY = ("ray", "mlflow", "optuna")


def layer(module: str) -> str:
    if module == "grokray":  # the package root: lazy re-exports for users, imports nothing
        return "presentation"
    for prefix, name in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"no layer for {module}")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` for every import of ``module`` outside TYPE_CHECKING."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [a.name for a in node.names]
            # ``from grokray import tracking`` imports the module grokray.tracking
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            out += [(s, [], node.lineno) for s in subs] or [(base, names, node.lineno)]
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in imports(m):
            if target in MODULES and target != m:
                g[m].add(target)
    return g


def test_every_module_has_a_layer():
    assert {layer(m) for m in MODULES} == {"core", "services", "presentation"}


def upward(g: dict[str, set[str]]) -> list[str]:
    """The edges of ``g`` that point up a layer."""
    return [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in g.items() for t in targets
            if RANK[layer(t)] > RANK[layer(m)]]


def test_layers_point_one_way():
    bad = upward(graph())
    assert not bad, "\n".join(bad)


def test_the_core_imports_neither_ray_nor_mlflow():
    bad = [f"{m}:{line} imports {t}" for m in MODULES if layer(m) == "core"
           for t, _, line in imports(m) if t.split(".")[0] in SERVICE_ONLY]
    assert not bad, "\n".join(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``g`` (strongly connected components), but for a package's own."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            strong(v)
    # A package's __init__ re-exporting its own modules is not a cycle of concepts.
    return [c for c in found if not all(x == c[0] or x.startswith(c[0] + ".") for x in c)]


def test_no_import_cycles():
    real = cycles(graph())
    assert not real, real


def test_the_checks_catch_what_they_guard():
    """The checks can fail: the contract importing the MLflow layer is an edge up and (since the layer
    imports the contract) a cycle; a package re-exporting its own modules is neither."""
    g = {m: set(ts) for m, ts in graph().items()}
    assert "grokray.contract" in g["grokray.tracking"] and "grokray.phasemap.axes" in g["grokray.phasemap"]
    g["grokray.contract"].add("grokray.tracking.store")
    g["grokray.tracking.store"].add("grokray.contract")
    assert upward(g) == ["grokray.contract (core) imports grokray.tracking.store (services)"]
    assert cycles(g) == [["grokray.contract", "grokray.tracking.store"]]
    assert not cycles({"grokray.phasemap": {"grokray.phasemap.read"}, "grokray.phasemap.read": {"grokray.phasemap"}})


def test_no_module_imports_a_private_name_from_another():
    bad = [f"{m}:{line} imports {n} from {t}" for m in MODULES for t, names, line in imports(m)
           if t.startswith("grokray") for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module, expected", [("grokray.train", "core"), ("grokray.transfer.finetune", "core"),
                                              ("grokray.contract", "core"), ("grokray.fmt", "core"),
                                              ("grokray.sweep.kinds.finetune", "services"),
                                              ("grokray.tracking", "services"), ("grokray.tracking.store", "services"),
                                              ("grokray.tracking.runlogger", "services"),
                                              ("grokray.transfermap", "presentation"), ("grokray.cli", "presentation"),
                                              ("grokray.cli.maps", "presentation"),
                                              ("grokray.phasemap.figure", "presentation")])
def test_layer_table(module, expected):
    assert layer(module) == expected


def test_no_undefined_names_unused_imports_or_dead_locals():
    """pyflakes' checks (ruff ``F``) over every Python file of the repository: an undefined name
    is a crash waiting for its branch, an unused import a layer edge nobody needs."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", "--select", "F", "--output-format", "concise", "grokray", "tests",
                          "benchmarks", "experiments"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
