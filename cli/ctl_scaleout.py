"""`maglev ctl drain-instance` / `resume-instance`, and the scale-out lines of `maglev ctl status`
(table fingerprints, the controller's BGP decision).  Served by the config manager, decided
by the controller in `maglev run` (maglev/actors/controller.py)."""

from __future__ import annotations

import json
from typing import Any

import click

from maglev_cli.ctl_common import call as _call
from maglev_cli.ctl_common import json_opt
from maglev_cli.ctl_common import opts as _opts


def _json(ctx: click.Context, as_json: bool) -> bool:
    return as_json or bool(_opts(ctx)["json"])


def status_lines(r: dict[str, Any]) -> list[str]:
    """Human lines for the ``tables`` and ``controller`` parts of a status result."""
    out = [f"WARNING       {w}" for w in r.get("warnings") or []]
    for t in r.get("tables") or []:
        if "error" in t:
            out.append(f"table         {t['vip']}: {t['error']}")
        else:
            out.append(f"table         {t['vip']} fingerprint {t['fingerprint']} "
                       f"({t['backends']} backends, {t['size']} slots)")
    c = r.get("controller")
    if isinstance(c, dict):
        if c.get("drained"):
            state = "DRAINED (every VIP withdrawn)"
        elif c.get("healthy"):
            state = "healthy"
        else:
            state = "UNHEALTHY: " + ("; ".join(c.get("problems") or []) or "starting")
        out.append(f"forwarder     {state}")
        if c.get("bgp"):
            out.append(f"announced     {', '.join(c.get('announced') or []) or '(nothing)'}")
            peers = ", ".join(f"{p.get('peer')} {p.get('state')}" for p in c.get("peers") or [])
            out.append(f"bgp peers     {peers or '(none yet)'}")
        else:
            out.append("announced     (no [bgp] peers configured)")
    return out


def _drain(ctx: click.Context, op: str, as_json: bool) -> None:
    r = _call(ctx, op, {}, as_json)
    if _json(ctx, as_json):
        click.echo(json.dumps(r))
        return
    click.echo(f"{op}: {'drained' if r['drained'] else 'resumed'}; {r['note']}")


@click.command("drain-instance")
@json_opt
@click.pass_context
def drain_instance(ctx, as_json) -> None:
    """Withdraw every VIP of this instance from BGP (traffic moves to the other instances;
    this one keeps forwarding what still reaches it).  Undo with resume-instance."""
    _drain(ctx, "drain-instance", as_json)


@click.command("resume-instance")
@json_opt
@click.pass_context
def resume_instance(ctx, as_json) -> None:
    """Announce the VIPs again (while the forwarder is healthy and a VIP has a healthy backend)."""
    _drain(ctx, "resume-instance", as_json)
