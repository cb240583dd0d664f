"""The package's floor plan holds: each module in one layer, imports only downward, no cycles, one job each.

The layers and their rules are drawn in docs/architecture.md; this test reads every module's imports
(module level and inside functions) with ``ast`` and fails naming the import that breaks a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "colabkit"

# bottom to top; a module may import its own layer and the ones below
LAYERS: dict[str, set[str]] = {
    "base": {"errors", "_version", "_format", "_runtime", "_files", "_procs", "_mounts", "_pathguard"},
    "doors": {"_nvml", "_colab", "_torch", "_kaggle"},
    "display": {"_display", "_notebook", "_screen"},
    "services": {"_gpu", "_drive", "_release", "_ocamlfuse", "_project", "_stats", "_monitor", "_plot", "_stop", "_stream",
                 "_disk", "_launch", "_secrets", "_frontend", "_ranks", "_remount",
                 "_steps", "_fit", "_autopsy", "_timeline", "_progress", "_heartbeat"},  # fmt: skip
    "run": {"_spec", "_summary", "_result", "_loop", "_run", "_stale", "_oom", "_stage", "_extract", "_checkpoint", "_history",
            "_rundir", "_command", "_findbatch", "_memory", "_resume", "_mirror", "_attach", "_keep"},  # fmt: skip
    "setup": {"_session", "_report", "_demo"},
    "api": {"__init__", "__main__", "cli", "_compat"},
}
# run as their own processes (the training child, its supervisor, the step hook inside the child, one copy pass
# of a run folder to Drive): they import nothing of colabkit
ALONE = {"_child", "_supervisor", "_memhook", "_copier"}
CHILD = {"_child", "_memhook"}  # inside the training child: they may import each other, nothing else of colabkit
MAX_LINES = 600
_ORDER = list(LAYERS)


def _modules() -> dict[str, Path]:
    found = {p.stem: p for p in PACKAGE.glob("*.py")}
    found.update({p.name: p / "__init__.py" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()})
    return found


def _imports(name: str, path: Path) -> set[str]:
    """The colabkit modules ``name`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    package_depth = 1 if path.name == "__init__.py" and name != "__init__" else 0
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the colabkit package
                if node.level - package_depth != 1:
                    continue
                if node.module:
                    out.add(node.module.split(".")[0])
                else:
                    out.update(alias.name for alias in node.names)
            elif node.module and (node.module == "colabkit" or node.module.startswith("colabkit.")):
                parts = node.module.split(".")
                if len(parts) > 1:
                    out.add(parts[1])
                else:
                    out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "colabkit":
                    out.add(parts[1] if len(parts) > 1 else "__init__")
    out.discard(name)
    return {m for m in out if m in _modules()}


def _layer(module: str) -> str:
    for layer, members in LAYERS.items():
        if module in members:
            return layer
    raise AssertionError(f"colabkit/{module} is in no layer: add it to LAYERS and docs/architecture.md")


GRAPH = {name: _imports(name, path) for name, path in _modules().items()}


def test_every_module_is_in_exactly_one_layer():
    placed = [m for members in LAYERS.values() for m in members]
    assert len(placed) == len(set(placed))
    assert set(_modules()) == set(placed) | ALONE


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_only_down(module):
    if module in ALONE:
        allowed = CHILD - {module} if module in CHILD else set()
        assert GRAPH[module] <= allowed, f"{module} must import nothing of colabkit" + (
            f" but {sorted(allowed)}" if allowed else ""
        )
        return
    mine = _ORDER.index(_layer(module))
    up = sorted(m for m in GRAPH[module] if m not in ALONE and _ORDER.index(_layer(m)) > mine)
    assert not up, f"{module} ({_layer(module)}) imports a higher layer: {up}"


@pytest.mark.parametrize("module", sorted(LAYERS["base"] | LAYERS["doors"]))
def test_base_and_doors_import_only_the_base(module):
    beyond = sorted(m for m in GRAPH[module] if m not in LAYERS["base"])
    assert not beyond, f"{module} must import only the base: {beyond}"


def test_display_asks_no_hardware():
    assert not GRAPH["_display"] & (LAYERS["doors"] | {"_procs", "_gpu", "_monitor"})


def test_mounting_knows_nothing_of_training():
    for module in ("_mounts", "_drive", "_ocamlfuse", "_colab", "_project"):
        assert not GRAPH[module] & (LAYERS["run"] | {"_monitor", "_stop", "_stream", "_stats"}), module


def test_no_import_cycles():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node] - {"__init__"}):  # the package resolves its names lazily, on first use
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_each_module_is_short_and_says_its_one_job(module):
    path = _modules()[module]
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concept"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.strip(), f"{path.relative_to(ROOT)} has no docstring saying its job"


def test_the_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = [m for m in _modules() if f"`{m}`" not in doc and f"`{m}/`" not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing}"
