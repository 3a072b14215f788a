"""House rules on the package's shape: no import circle inside ``ptdpo/``, no module over ~600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ptdpo"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` refers to (the longest known prefix), None outside ``ptdpo``."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``module -> package modules it imports``, counting every ``import``/``from ... import`` anywhere in
    the file (module level, inside functions, under ``TYPE_CHECKING``): a lazy import is still a
    dependency. ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg``; importing
    ``pkg.sub`` counts ``pkg.sub`` only (not the parent ``__init__`` Python also runs)."""
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level-1 more
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                hit = _resolve(t, modules)
                if hit is not None and hit != mod:
                    edges.add(hit)
        graph[mod] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-loop), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion depth stays low
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_circles_and_only_circles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    modules = {"ptdpo": tmp_path / "__init__.py", "ptdpo.x": tmp_path / "x.py", "ptdpo.y": tmp_path / "y.py",
               "ptdpo.z": tmp_path / "z.py"}
    modules["ptdpo"].write_text("from ptdpo import x\n")
    modules["ptdpo.x"].write_text("def f():\n    from ptdpo.y import g\n    return g\n")
    modules["ptdpo.y"].write_text("from . import z\nimport os\n")
    modules["ptdpo.z"].write_text("import ptdpo.x\n")
    graph = import_graph(modules)
    assert graph == {"ptdpo": {"ptdpo.x"}, "ptdpo.x": {"ptdpo.y"}, "ptdpo.y": {"ptdpo.z"}, "ptdpo.z": {"ptdpo.x"}}
    assert find_cycles(graph) == [["ptdpo.x", "ptdpo.y", "ptdpo.z"]]


def test_the_package_has_no_import_circle():
    modules = _modules()
    graph = import_graph(modules)
    assert graph["ptdpo.hints.generation"] >= {"ptdpo.hints.generator_base"}  # the graph sees real imports
    assert find_cycles(graph) == []


def _over_limit() -> dict[str, int]:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in _modules().values()}
    return {p: n for p, n in sorted(sizes.items()) if n > MAX_LINES}


def test_no_module_over_the_size_limit():
    assert _over_limit() == {}
