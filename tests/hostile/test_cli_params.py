"""Every number of seconds (or other float) the ``maglev`` command line takes refuses
``nan`` and ``inf`` with click's one-line usage error.  click's ``FloatRange`` compares,
and every comparison with NaN is false, so ``maglev top --interval nan`` used to pass the
check and reach the code (``backend-agent --duration`` had its own NaN check; the others
had none).  The test walks the whole command tree, so an option added later is covered."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from maglev_cli.main import cli
from maglev_cli.params import FiniteFloatRange


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                out += _commands(sub, (*path, name))
    return out


def _float_options() -> list[tuple[tuple[str, ...], click.Option]]:
    return [(path, p) for path, cmd in _commands(cli) for p in cmd.params
            if isinstance(p, click.Option) and isinstance(p.type, (click.FloatRange, click.types.FloatParamType))]


FLOAT_OPTIONS = _float_options()


def test_the_walk_finds_the_float_options():
    names = {(" ".join(path), p.opts[0]) for path, p in FLOAT_OPTIONS}
    assert ("top", "--interval") in names and ("run", "--stall-ms") in names and ("lab up", "--wait") in names, names


@pytest.mark.parametrize("path,opt", FLOAT_OPTIONS, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in FLOAT_OPTIONS])
def test_every_float_option_refuses_nan_and_inf(path, opt):
    assert isinstance(opt.type, FiniteFloatRange), f"maglev {' '.join(path)} {opt.opts[0]}: use FiniteFloatRange"
    for bad in ("nan", "inf", "-inf"):
        r = CliRunner().invoke(cli, [*path, opt.opts[0], bad])
        assert r.exit_code == 2, (bad, r.output, r.exception)
        assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
        assert "Invalid value for" in r.output and opt.opts[0] in r.output, r.output


def test_conntrack_list_refuses_a_name_no_instance_can_have():
    for bad in ("../../etc", "a" * 65, "x/y"):
        r = CliRunner().invoke(cli, ["conntrack", "list", "--instance", bad])
        assert r.exit_code == 2 and "maglev: error: instance name" in r.output, r.output
