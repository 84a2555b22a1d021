"""The house rules for imports, checked on the source (issue 12).

* No import circle among ``maglev/`` and ``cli/`` modules.  Every import statement counts,
  wherever it is (module level, inside a function, under ``if TYPE_CHECKING``): a lazy or a
  typing-only import still ties the two modules together for a reader.  Where a type is
  needed across a would-be circle, use a ``typing.Protocol``.
* The low floors never import up: the low telemetry floor (``maglev.telemetry``: OpenTelemetry
  set-up, span helpers, context propagation), ``maglev.rings`` and ``maglev.datapath`` import
  neither ``maglev.actors`` nor the high telemetry floor (``maglev.observability``).
* Production code stands alone: no module of ``maglev/`` (outside ``maglev/testing/``) or
  ``cli/`` imports ``maglev.testing``, in any way: an import statement anywhere, or a
  module named in a string to ``importlib.import_module``/``__import__`` or as an actor's
  ``"module:Class"``.  What production and tests both need lives in production
  (``maglev.datapath.frames``, ``maglev.lab.nsenter.why_no_netns``).
"""

from __future__ import annotations

import ast
import re
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


TESTING = ("maglev.testing",)
_MODULE_STRING = re.compile(r"^maglev\.testing(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _named_in_strings(tree: ast.AST) -> list[tuple[str, int]]:
    """Strings that are exactly a ``maglev.testing`` module path (``a.b`` or ``a.b:Name``):
    what ``importlib.import_module``, ``__import__`` or an actor spec would load."""
    return [(n.value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and _MODULE_STRING.match(n.value)]


def production_imports_of_testing(mods: dict[str, Path] | None = None) -> list[str]:
    mods = mods if mods is not None else _modules()
    bad = []
    for m, path in sorted(mods.items()):
        if _under(m, TESTING):
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        by_line: dict[int, str] = {}  # the deepest module a line reaches (not its packages too)
        for t, line in _targets(mods, m, tree).items():
            if _under(t, TESTING) and len(t) > len(by_line.get(line, "")):
                by_line[line] = t
        bad += [f"{where}:{line} imports {t}" for line, t in sorted(by_line.items())]
        bad += [f"{where}:{line} names {text!r}" for text, line in _named_in_strings(tree)]
    return bad


def test_production_never_imports_testing() -> None:
    mods = _modules()
    assert "maglev.observability.whereis" in mods and "maglev_cli.main" in mods, "the walk missed maglev/ or cli/"
    bad = production_imports_of_testing(mods)
    assert not bad, ("production code imports test helpers (move what it needs into a production "
                     "module):\n" + "\n".join(bad))


def test_checker_sees_every_way_to_import_testing(tmp_path: Path) -> None:
    """The checker itself: each of these ways of reaching ``maglev.testing`` is found, in a
    function body too, and ``maglev/testing/`` itself may import what it likes."""
    ways = {
        "plain": "import maglev.testing.packets\n",
        "from_pkg": "from maglev import testing\n",
        "from_mod": "def f():\n    from maglev.testing.netns import why_no_netns\n",
        "relative": "from ..testing import packets as P\n",
        "dynamic": "import importlib\nP = importlib.import_module('maglev.testing.packets')\n",
        "spec": "ACTOR = 'maglev.testing.fake:Sleeper'\n",
    }
    root = tmp_path / "maglev"
    mods = {"maglev": root / "__init__.py", "maglev.testing": root / "testing" / "__init__.py",
            "maglev.testing.packets": root / "testing" / "packets.py",
            "maglev.testing.netns": root / "testing" / "netns.py", "maglev.lab": root / "lab" / "__init__.py"}
    for path in mods.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    mods["maglev.testing.packets"].write_text("from maglev.testing import netns\n")  # allowed
    mods["maglev.lab.clean"] = root / "lab" / "clean.py"
    mods["maglev.lab.clean"].write_text('"""Uses nothing of ``maglev.testing``."""\nimport maglev.lab\n')
    for name, src in ways.items():
        mods[f"maglev.lab.{name}"] = root / "lab" / f"{name}.py"
        mods[f"maglev.lab.{name}"].write_text(src)
    bad = production_imports_of_testing(mods)
    for name in ways:
        assert any(f"lab/{name}.py:" in b for b in bad), (name, bad)
    assert not any("clean.py" in b or "testing/packets.py" in b for b in bad), bad


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
