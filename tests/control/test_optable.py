"""The one table of control operations (maglev/control/optable.py) agrees with the code
that serves each op, the CLI that sends it and the docs that describe it."""

from __future__ import annotations

from pathlib import Path

import pytest

from maglev.actors.config_manager import SCALEOUT_OPS
from maglev.control import ops, optable
from maglev.control.manager import CHANGE_OPS, OPS
from maglev.control.protocol import ProtocolError
from maglev.observability import ops as observability

DOC = Path(__file__).resolve().parents[2] / "docs" / "control-protocol.md"


def test_every_served_op_is_in_the_table_with_its_owner():
    assert set(OPS) == set(optable.names("config"))
    assert set(observability.OPS) == set(optable.names("observability"))
    assert set(SCALEOUT_OPS) == set(optable.names("scaleout"))
    assert set(optable.NAMES) == set(OPS) | set(observability.OPS) | set(SCALEOUT_OPS)
    assert set(CHANGE_OPS) == {*ops.CHANGES, "reload"} == set(optable.CHANGE_OPS)
    assert all("force" in optable.BY_NAME[op].optional for op in CHANGE_OPS)


def test_docs_carry_the_generated_table_and_a_section_per_op():
    text = DOC.read_text()
    assert optable.markdown() in text, "regenerate with: python -m maglev.control.optable"
    for op in optable.names("config"):  # the others are described in observability.md and scaleout.md
        assert f"**{op}**" in text, f"docs/control-protocol.md has no section for {op}"


def test_every_ctl_command_in_the_table_exists():
    import click

    from maglev_cli.main import cli

    for op in optable.TABLE:
        if not op.ctl:
            continue
        cmd = cli
        for w in op.ctl.split()[1:]:
            if w.isupper() or w.startswith("["):  # arguments and optional parts
                break
            if w.startswith("--"):  # an option the command must have
                assert any(w in getattr(p, "opts", ()) for p in cmd.params), f"{op.ctl}: no {w}"
                continue
            assert isinstance(cmd, click.Group), op.ctl
            cmd = cmd.get_command(click.Context(cmd), w)
            assert cmd is not None, f"{op.name}: no `{op.ctl}`"
        if "--force" in op.ctl:
            assert any(p.name == "force" for p in cmd.params), op.ctl


@pytest.mark.parametrize(
    "op,args,code,field",
    [
        ("nope", {}, "unknown-op", "op"),
        ("set-weight", {"vip": "v", "backend": "b"}, "bad-args", "weight"),
        ("status", {"x": 1}, "bad-args", "x"),
        ("trace", {b"vip": 1}, "bad-args", "b'vip'"),
        ("remove-backend", {"vip": "v", "backend": "b", "force": True, "extra": 0}, "bad-args", "extra"),
    ],
)
def test_check_refuses_unknown_ops_and_argument_names(op, args, code, field):
    with pytest.raises(ProtocolError) as ei:
        optable.check(op, args)
    assert (ei.value.code, ei.value.field) == (code, field)


def test_check_accepts_required_and_optional():
    assert optable.check("trace", {"vip": "x", "count": 1}).owner == "observability"
    assert optable.check("replace-config", {"config": {}, "force": False}).changes_config


HANDLERS = [Path(m.__file__) for m in (ops, observability)] + [DOC.parents[1] / "maglev" / "control" / "manager.py"]


def test_handlers_take_argument_names_from_the_table_only():
    """An op's argument names are written once, in its row: no handler re-lists them
    (``check_keys(args, (...))`` with literal names) -- they go through ``ops.check_args``."""
    import ast

    bad = []
    for path in HANDLERS:
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef) or fn.name == "check_args":
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "check_keys"
                        and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "args"):
                    bad.append(f"{path.name}:{node.lineno} ({fn.name})")
    assert not bad, "argument names listed again outside maglev/control/optable.py: " + ", ".join(bad)


@pytest.mark.parametrize("op", sorted(ops.CHANGES))
def test_a_change_function_accepts_what_its_row_allows(op, monkeypatch):
    """A name added to an op's row is accepted by its change function with no other edit
    (then the function goes on to the next check: a missing required argument)."""
    from dataclasses import replace

    row = optable.BY_NAME[op]
    monkeypatch.setitem(optable.BY_NAME, op, replace(row, optional=(*row.optional, "s8t_probe")))
    with pytest.raises(ProtocolError) as ei:
        ops.CHANGES[op](None, {"s8t_probe": 1})
    assert (ei.value.code, ei.value.field) == ("bad-args", row.required[0]), ei.value
