"""The import graph of ``saelib/`` has no cycle, function-local imports included.

The graph is built from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for every
``import``/``from ... import`` anywhere in module ``a`` (module level, inside functions, under
``if TYPE_CHECKING``) that names module ``b`` of the package, relative or absolute;
``from . import x`` points at the submodule ``x`` when there is one. Importing ``a.b.c`` also runs
the ``__init__`` of ``a`` and ``a.b``, but those implicit edges are left out, as import linters do:
every package's ``__init__`` imports its own submodules, so counting them would make every package
a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "saelib"



def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``*.py`` under ``root`` (a package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None: outside it)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``module`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in modules else _resolve(base, modules)
                if target:
                    out.add(target)
    out.discard(module)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    modules = module_names(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle
    path through it (first module repeated at the end), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(_cycle_path(graph, comp) for comp in comps)


def _cycle_path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the first module of ``comp`` (breadth-first inside the component)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def _fmt(cycle: list[str]) -> str:
    return " -> ".join(cycle)


# ---------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_graph_sees_local_relative_and_submodule_imports(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n",
        "pkg/a.py": "import os\n\ndef f():\n    from .sub import b  # function-local\n    return b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from .. import c\nimport pkg.sub.d as d\n",
        "pkg/c.py": "from pkg.sub.b import thing\n",
        "pkg/sub/d.py": "from ..a import f\n",
        "pkg/e.py": "from . import sub\nfrom .missing import x\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub.b"}  # os is outside the package
    assert graph["pkg.sub.b"] == {"pkg.c", "pkg.sub.d"}  # from .. import c resolves to the submodule
    assert graph["pkg.c"] == {"pkg.sub.b"}
    assert graph["pkg.sub.d"] == {"pkg.a"}
    assert graph["pkg.e"] == {"pkg.sub", "pkg"}  # an unknown submodule falls back to its package
    # a -> b -> d -> a and b -> c -> b share b: one strongly connected component, reported once
    # by a shortest cycle through its first module
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.d", "pkg.a"]]
    del graph["pkg.sub.d"]
    graph["pkg.sub.b"] = {"pkg.c"}
    assert cycles(graph) == [["pkg.c", "pkg.sub.b", "pkg.c"]]


def test_graph_without_cycles_reports_none(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from . import a, b\n",
        "pkg/a.py": "def f():\n    from .b import g\n    return g\n",
        "pkg/b.py": "import json\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert cycles(graph) == []


# ---------------------------------------------------------------- saelib


@pytest.fixture(scope="module")
def saelib_graph():
    return import_graph(ROOT)


def test_corpus_and_hub_do_not_import_each_other_back(saelib_graph):
    graph = saelib_graph
    assert "saelib.data.hub" in graph["saelib.data.corpus"]  # load_corpus dispatches to load_pile
    assert "saelib.data.corpus" not in graph["saelib.data.hub"]
    assert graph["saelib.data.split"] == set()  # the split rule imports nothing of saelib


def test_saelib_has_no_import_cycle_at_all(saelib_graph):
    assert "saelib.data.corpus" in saelib_graph and "saelib.data.hub" in saelib_graph
    found = cycles(saelib_graph)
    assert not found, "import cycles in saelib/:\n" + "\n".join(_fmt(c) for c in found)
