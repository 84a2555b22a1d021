"""`maglev doctor`: check this host before the first `maglev run` (each problem with its fix)."""

from __future__ import annotations

import json

import click

from maglev_cli.params import FiniteFloatRange


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The TOML config maglev will run with (default: the built-in sample config).")
@click.option("--nic", default="gen", show_default=True,
              help="The --nic maglev will run with, e.g. afpacket:eth0.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--timeout", type=FiniteFloatRange(0.05, 30), default=1.0, show_default=True,
              help="Seconds to wait for each TCP probe (BGP peers, backends).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, counts, findings.")
def doctor(config_path, nic, workers, timeout, as_json) -> None:
    """Check kernel features, capabilities, interface MTU and rp_filter, huge pages, memory,
    BGP peers, backends and the flow-hash secret.  Exit 0 when nothing fails, 1 otherwise."""
    from pathlib import Path

    import maglev
    from maglev.config import load
    from maglev.service.doctor import Context, Host, run_checks, summary

    cfg = load(config_path or Path(maglev.__file__).parent / "data" / "sample.toml")
    ctx = Context(cfg, nic=nic, workers=workers, host=Host(connect_timeout_s=timeout),
                  lab=config_path is None)
    findings = run_checks(ctx)
    s = summary(findings)
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
    else:
        for f in findings:
            click.echo(f.line())
        c = s["counts"]
        click.echo(f"{c['ok']} ok, {c['warn']} warnings, {c['fail']} failures, {c['skip']} skipped")
    raise SystemExit(0 if s["ok"] else 1)
