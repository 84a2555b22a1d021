"""`maglev table`: build Maglev lookup tables and report how evenly they spread."""

from __future__ import annotations

import json

import click

from maglev.hashing import DEFAULT_TABLE_SIZE, ENGINES, MaglevTable, build_table


def _summary(table: MaglevTable, fingerprint: str | None = None) -> dict:
    counts = table.counts or (0,)
    live = [c for c, w in zip(table.counts, table.weights, strict=True) if w > 0] or [0]
    return {
        "size": table.size,
        "backends": len(table.names),
        "entries_min": min(live),
        "entries_max": max(live),
        "entries_total": sum(counts),
        "build_ms": round(table.build_seconds * 1e3, 3),
        "fingerprint": fingerprint or table.fingerprint(),
    }


@click.command()
@click.option("--backends", "n_backends", type=click.IntRange(1, 65536), help="N synthetic backends (b0000..).")
@click.option("--size", type=int, default=DEFAULT_TABLE_SIZE, show_default=True, help="Table size M (prime).")
@click.option("--config", "config_path", type=click.Path(), help="Build one table per VIP of this config file.")
@click.option("--engine", type=click.Choice(ENGINES), default="c", show_default=True)
@click.option("--evaluate", is_flag=True, help="Reproduce the paper's Figures 11 and 12 (Maglev vs Karger vs Rendezvous).")
@click.option("--plot", type=click.Path(dir_okay=False), help="With --evaluate: also write a PNG (needs matplotlib).")
@click.option("--diff", "diff", nargs=2, type=click.Path(dir_okay=False), default=None, metavar="OLD NEW",
              help="Per VIP, the share of table entries (and estimated flows) that would move from OLD to NEW.")
@click.option("--shard", default=None, metavar="NAME", help="With a sharded config: this [[shard]]'s VIPs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def table(n_backends, size, config_path, engine, evaluate, plot, diff, shard, as_json) -> None:
    """Build Maglev lookup tables (paper section 3.4) and show their balance."""
    if diff:
        _diff(diff[0], diff[1], as_json, shard)
        return
    if evaluate:
        from maglev.hashing.evaluate import run_evaluation

        run_evaluation(as_json=as_json, plot=plot, engine=engine)
        return
    if config_path:
        from maglev import config as cfg

        conf = cfg.load_forwarder(config_path, shard)
        out = []
        from maglev.control.tables import vip_fingerprint

        for vip in conf.vips:
            t = build_table(((b.key, b.weight) for b in vip.backends), vip.table_size, engine)
            # what `maglev ctl status` reports for this VIP while all its backends are up
            fp = vip_fingerprint(vip, t, conf.instance.flow_hash_secret)
            out.append({"vip": vip.key, **_summary(t, fp)})
        if as_json:
            click.echo(json.dumps(out if len(out) != 1 else out[0]))
        else:
            for row in out:
                _print_row(row)
        return
    if not n_backends:
        raise click.UsageError("give --backends N, --config FILE or --evaluate")
    t = build_table(((f"b{i:04d}", 1) for i in range(n_backends)), size, engine)
    row = _summary(t)
    if as_json:
        click.echo(json.dumps(row))
    else:
        _print_row(row)


def _print_row(row: dict) -> None:
    head = f"{row['vip']}: " if "vip" in row else ""
    click.echo(
        f"{head}M={row['size']} backends={row['backends']} entries per backend "
        f"min={row['entries_min']} max={row['entries_max']} build={row['build_ms']} ms "
        f"fingerprint={row['fingerprint']}"
    )


def _diff(old_path: str, new_path: str, as_json: bool, shard: str | None = None) -> None:
    """``--diff OLD NEW``: both configs validated and built with every backend healthy
    (maglev/control/preview.py); established flows are estimated from the old table (no
    running instance here: ``maglev ctl apply --dry-run`` counts them)."""
    from maglev import config as cfg
    from maglev.control.preview import diff_tables
    from maglev.datapath.tables import build_tables

    rows = diff_tables(build_tables(cfg.load_forwarder(old_path, shard)),
                       build_tables(cfg.load_forwarder(new_path, shard)))
    if as_json:
        click.echo(json.dumps({"old": old_path, "new": new_path, "vips": rows}))
        return
    print_preview(rows)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def print_preview(rows: list[dict]) -> None:
    """One line per VIP: status, entries moved, flows moved (counted or estimated) and its
    basis."""
    click.echo(f"{'VIP':<32} {'status':<9} {'entries moved':>13} {'flows moved*':>12}  basis")
    for r in rows:
        basis = r["flows_basis"]
        if "flows_live_entries" in r:
            basis += f" ({r['flows_moved_entries']} of {r['flows_live_entries']} live entries)"
        elif r.get("flows_estimated"):
            basis += " (estimate)"
        click.echo(f"{r['vip']:<32} {r['status']:<9} {_pct(r['entries_moved_share']):>13} "
                   f"{_pct(r['flows_moved_share']):>12}  {basis}")
    click.echo("* established flows keep their backend unless it is removed or down: basis conntrack = "
               "counted in the workers' shared connection tables; otherwise estimated")
