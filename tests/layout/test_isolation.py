"""The suite survives a second copy of itself on the same machine (docs/development.md,
"Test isolation").

What a test makes outside its process -- an instance name (/dev/shm/maglev-<instance>-*),
a region, a namespace, a link, a file -- is named by ``maglev.testing.unique``, the one
helper; ports come from ``maglev.testing.ports.free_port`` (the kernel's pick).  The checks
here: the helper's names are unique and valid, and no test, test helper or benchmark builds
a name its own way from a pid modulo something (pids repeat across sessions modulo
anything) or from a handful of random hex digits spelled out again.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from maglev.testing import unique

ROOT = Path(__file__).resolve().parents[2]
# Where names are made for tests and benchmarks; maglev/testing/unique.py is the one place
# that may draw the random digits.
SCANNED = ("tests", "maglev/testing", "bench")
HELPER = ROOT / "maglev" / "testing" / "unique.py"


def _is_call(node: ast.AST, module: str, func: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == func
            and isinstance(node.func.value, ast.Name) and node.func.value.id == module)


def home_made_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every f-string part that is ``os.getpid() % N`` or
    ``secrets.token_hex(n)`` with n <= 4 (a name's suffix; longer tokens are secrets)."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FormattedValue):
            continue
        v = node.value
        if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Mod) and _is_call(v.left, "os", "getpid"):
            out.append((node.lineno, "os.getpid() % N in a name"))
        elif (_is_call(v, "secrets", "token_hex") and v.args and isinstance(v.args[0], ast.Constant)
              and isinstance(v.args[0].value, int) and v.args[0].value <= 4):
            out.append((node.lineno, f"secrets.token_hex({v.args[0].value}) in a name"))
    return out


def test_names_are_made_by_the_one_helper() -> None:
    bad = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == HELPER:
                continue
            for line, what in home_made_names(ast.parse(path.read_text(), str(path))):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {what}: use maglev.testing.unique.name()/short()")
    assert not bad, "\n".join(bad)


def test_the_check_sees_the_home_made_kinds() -> None:
    src = ('a = f"obs{os.getpid() % 100000}"\n'
           'b = f"t{secrets.token_hex(4)}"\n'
           'c = f"mgt-lab{secrets.token_hex(2)}x"\n'
           'd = f"{secrets.token_hex(16)}"\n'  # a secret, not a name
           'e = f"lkg{os.getpid()}"\n')      # a whole pid: unique among live processes
    assert [line for line, _ in home_made_names(ast.parse(src))] == [1, 2, 3]


def test_names_are_unique_and_valid_instance_names() -> None:
    names = [unique.name("s8t") for _ in range(2000)]
    assert len(set(names)) == len(names)
    assert all(unique.INSTANCE_RE.match(n) and n.startswith("s8t") and len(n) == 11 for n in names)
    with pytest.raises(ValueError, match="1-64 characters"):
        unique.name("bad/name")
    with pytest.raises(ValueError, match="1-64 characters"):
        unique.name("x" * 60)


def test_short_names_avoid_what_is_taken(tmp_path: Path) -> None:
    """Half of the short names are taken (as leftovers in /run/netns would be): a draw
    never returns one of them; with all taken it says so."""
    taken = tmp_path / "taken"
    taken.mkdir()
    for i in range(0, 16, 2):
        (taken / f"s8tq{i:x}-router").touch()
    for _ in range(40):
        n = unique.short("s8tq", taken=(str(taken),), digits=1)
        assert len(n) == 5 and int(n[4:], 16) % 2 == 1, n
    for i in range(1, 16, 2):
        (taken / f"s8tq{i:x}").touch()
    with pytest.raises(RuntimeError, match="no free name s8tqX after 64 tries"):
        unique.short("s8tq", taken=(str(taken),), digits=1)
    assert len(unique.short("mgt-lab")) == len("mgt-lab") + 4
