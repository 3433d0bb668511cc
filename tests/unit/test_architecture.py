"""The layout stays true: no import cycle inside the package, handlers never climb back up into
the composition root, the cross-process contracts stay a low floor, and the workers import no
web module. Read from the source with ``ast`` (imports under ``if TYPE_CHECKING:`` are type
hints only and do not count)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "workers")
# what workers/ may take from service/: the floor, not the web process
WORKERS_MAY_IMPORT = {
    "service.contracts",
    "service.settings",
    "service.db",
    "service.logs",
    # what fan-out deliveries carry: the resources and their row model (no I/O), the signing
    # and URL rules
    "service.resources",
    "service.rows",
    "service.outbound",
}
WEB_LIBRARIES = ("starlette", "asyncpg", "redis", "granian")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """(module, names) of every import that runs, wherever it is (function bodies too)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            yield from (item for child in node.orelse for item in _imports(_wrap(child)))
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [alias.name for alias in node.names]
        yield from _imports(node)


def _wrap(node: ast.stmt) -> ast.Module:
    return ast.Module(body=[node], type_ignores=[])


def _targets(module: str, names: list[str]) -> set[str]:
    """The package modules an import statement loads."""
    submodules = {f"{module}.{name}" for name in names} & MODULES.keys()
    if module in MODULES and len(submodules) < len(names):
        submodules.add(module)  # some names come from the module (or package) itself
    return submodules


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges: set[str] = set()
        for module, names in _imports(tree):
            edges |= _targets(module, names)
        edges.discard(name)
        # a package's own __init__ loading its submodules is not a climb back up
        graph[name] = {e for e in edges if not e.startswith(name + ".")}
    return graph


def _external(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {module.split(".")[0] for module, _ in _imports(tree)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = _graph()
    graph["service.rows"] = graph["service.rows"] | {"service.app"}
    assert any("service.app" in c and "service.rows" in c for c in _cycles(graph))


def test_only_the_command_line_imports_the_composition_root() -> None:
    importers = {name for name, edges in _graph().items() if "service.app" in edges}
    assert importers <= {"service.cli"}, importers


def test_workers_import_no_web_module() -> None:
    for name, edges in _graph().items():
        if name.startswith("workers"):
            web = {e for e in edges if e.startswith("service")} - WORKERS_MAY_IMPORT
            assert not web, f"{name} imports {sorted(web)}"


def test_the_contracts_are_a_low_floor() -> None:
    graph = _graph()
    assert graph["service.contracts"] == set()
    # its only third-party import at load time is msgspec (dramatiq and redis load when
    # redis_broker is called)
    tree = ast.parse(MODULES["service.contracts"].read_text())
    top = {m.split(".")[0] for m, _ in _imports(_module_level(tree))}
    assert not top & set(WEB_LIBRARIES), top


def _module_level(tree: ast.Module) -> ast.Module:
    return ast.Module(
        body=[n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)],
        type_ignores=[],
    )


def test_the_row_model_does_no_io() -> None:
    assert not _external(MODULES["service.rows"]) & set(WEB_LIBRARIES)
    assert _graph()["service.rows"] == set()
