"""What every ``maglev ctl`` subcommand module shares: the group's options, one call to
the control socket (errors printed once, exit 2), tables and the ``--json`` flag.

``maglev_cli.ctl`` (the group), ``ctl_obs`` and ``ctl_scaleout`` import this module; it
imports none of them.
"""

from __future__ import annotations

import json
from typing import Any

import click

json_opt = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def opts(ctx: click.Context) -> dict[str, Any]:
    c = ctx
    while c is not None:
        if isinstance(c.obj, dict) and "control" in c.obj:
            return c.obj
        c = c.parent
    raise click.UsageError("internal: ctl options missing")


def call(ctx: click.Context, op: str, args: dict[str, Any] | None, as_json: bool) -> Any:
    from maglev.control.client import ControlClient
    from maglev.control.protocol import ProtocolError
    from maglev.telemetry.spans import client_span

    o = opts(ctx)
    as_json = as_json or o["json"]
    try:
        with client_span(op), ControlClient(o["control"], timeout=o["timeout"], client_key_file=o["client_key"],
                                            server_key=o["server_key"]) as c:
            return c.call(op, args or {})
    except ProtocolError as exc:
        details = exc.details if isinstance(exc.details, list) and exc.details else None
        if as_json:
            err = {"code": exc.code, "message": exc.message, "field": exc.field}
            click.echo(json.dumps({"ok": False, "error": err if details is None else {**err, "details": details}}))
        elif exc.code == "invalid-config" and details is not None:
            # One line per problem, as `maglev check` and `ctl apply` print them: `ctl reload`
            # joined them into one line with "; " (session 10).
            for p in details:
                click.echo(f"maglev: error: {p}", err=True)
        else:
            where = f" (field {exc.field})" if exc.field and exc.code != "needs-force" else ""
            click.echo(f"maglev ctl: {op}: {exc.code}: {exc.message}{where}", err=True)
        ctx.exit(2)


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[h for _, h in cols]] + [["" if r.get(k) is None else fmt(r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
