"""The house rules for imports, checked on the source (issue 12).

* No import circle among ``maglev/`` and ``cli/`` modules.  Every import statement counts,
  wherever it is (module level, inside a function, under ``if TYPE_CHECKING``): a lazy or a
  typing-only import still ties the two modules together for a reader.  Where a type is
  needed across a would-be circle, use a ``typing.Protocol``.
* The low floors never import up: the low telemetry floor (``maglev.telemetry``: OpenTelemetry
  set-up, span helpers, context propagation), ``maglev.rings`` and ``maglev.datapath`` import
  neither ``maglev.actors`` nor the high telemetry floor (``maglev.observability``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"maglev": ROOT / "maglev", "maglev_cli": ROOT / "cli"}

LOW = ("maglev.telemetry", "maglev.rings", "maglev.datapath")
HIGH = ("maglev.actors", "maglev.observability")


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _is_package(mods: dict[str, Path], name: str) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def _resolve(mods: dict[str, Path], importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(mods, importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(mods: dict[str, Path], importer: str, tree: ast.AST) -> dict[str, int]:
    """Module -> first line number, for every module of ours that ``importer`` makes Python
    load: the named module, its submodules named in ``from X import sub``, and the package
    ``__init__`` files on the way that the importer does not already sit in."""
    out: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            m = ".".join(parts[:i])
            if m in mods and m != importer and not importer.startswith(m + "."):
                out.setdefault(m, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mods, importer, node)
            add(base, node.lineno)
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    add(f"{base}.{a.name}", node.lineno)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    mods = _modules()
    return {m: _targets(mods, m, ast.parse(p.read_text(), str(p))) for m, p in mods.items()}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _under(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _describe(graph: dict[str, dict[str, int]], comp: list[str]) -> str:
    members = set(comp)
    edges = [f"{a} -> {b} (line {graph[a][b]})" for a in comp for b in sorted(graph[a]) if b in members]
    return "circle: " + ", ".join(comp) + "\n    " + "\n    ".join(edges)


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 100, "the walk found too few modules: wrong root?"
    found = circles(graph)
    assert not found, "\n".join(_describe(graph, c) for c in found)


def test_low_floors_do_not_import_up() -> None:
    graph = import_graph()
    bad = [f"{m} imports {t} (line {line})" for m, ts in sorted(graph.items()) if _under(m, LOW)
           for t, line in sorted(ts.items()) if _under(t, HIGH)]
    assert not bad, "\n".join(bad)


def test_checker_sees_circles_and_lazy_imports(tmp_path: Path) -> None:
    """The checker itself: a circle closed by a function-local, typing-only import is found."""
    mods = {"p": tmp_path / "p" / "__init__.py", "p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}
    src = {
        "p": "",
        "p.a": "from p import b\n",
        "p.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.a import X\n"
               "def f():\n    from . import a\n",
    }
    graph = {m: _targets(mods, m, ast.parse(s)) for m, s in src.items()}
    assert graph["p.a"] == {"p.b": 1}
    assert graph["p.b"] == {"p.a": 3}
    assert circles(graph) == [["p.a", "p.b"]]
