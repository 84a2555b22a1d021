"""`maglev ctl`: talk to a running maglev over its control socket.

Human output is a small table or one line per change; ``--json`` prints the server's result
unchanged (stable for scripts: the documented result of each op, docs/control-protocol.md).
An error reply prints one line (``--json``: a JSON error object) and exits 2; a change that
not every worker confirmed in time exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from maglev.control import endpoints
from maglev_cli.ctl_common import call as _call
from maglev_cli.ctl_common import fmt as _fmt
from maglev_cli.ctl_common import json_opt
from maglev_cli.ctl_common import opts as _opts
from maglev_cli.ctl_common import table as _table
from maglev_cli.params import FiniteFloatRange


def _change(ctx: click.Context, op: str, args: dict[str, Any], as_json: bool) -> None:
    r = _call(ctx, op, args, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
    elif not r.get("changed", True):
        click.echo(f"{op}: nothing to change (generation {r['generation']})")
    else:
        click.echo(
            f"{op}: generation {r['generation']} {'confirmed by every worker' if r['confirmed'] else 'NOT confirmed'} "
            f"in {r['apply_ms']:.2f} ms (build {r['build_ms']:.2f}, publish {r['publish_ms']:.2f}, "
            f"wait {r['wait_ms']:.2f}, persist {r['persist_wait_ms']:.2f} more)"
        )
    if not r.get("confirmed", True):
        click.echo(f"maglev ctl: {op}: applied, but not every worker reported generation {r['generation']} in time",
                   err=True)
        ctx.exit(1)


force_opt = click.option("--force", is_flag=True,
                         help="Allow a change that removes every VIP, or every backend of a VIP.")


def _forced(args: dict[str, Any], force: bool) -> dict[str, Any]:
    """``force`` goes on the wire only when given (older servers know no such argument)."""
    return {**args, "force": True} if force else args


@click.group()
@click.option("--control", envvar="MAGLEV_CONTROL", default="",
              help="Control endpoint (default: ipc:// socket of --instance under the run directory).")
@click.option("--events", envvar="MAGLEV_EVENTS", default="", help="Events endpoint (default: beside --control).")
@click.option("--instance", envvar="MAGLEV_INSTANCE", default="mg1", show_default=True,
              help="Instance name, to find its default sockets.")
@click.option("--timeout", type=FiniteFloatRange(0.1, 600), default=10.0, show_default=True,
              help="Seconds to wait for a reply.")
@click.option("--client-key", envvar="MAGLEV_CLIENT_KEY", default="", help="tcp://: your CURVE .key_secret file.")
@click.option("--server-key", envvar="MAGLEV_SERVER_KEY", default="",
              help="tcp://: the server's CURVE public key (Z85) or .key file.")
@click.option("--shard", envvar="MAGLEV_CTL_SHARD", default="", metavar="NAME",
              help="Address this [[shard]]: its [shard.control] endpoint with --config, else the default "
                   "socket of instance INSTANCE-NAME.")
@click.option("--config", "config_path", envvar="MAGLEV_CONFIG", default="", type=click.Path(),
              help="With --shard: the sharded config file, to find the shard's endpoint and instance name.")
@json_opt
@click.pass_context
def ctl(ctx, control, events, instance, timeout, client_key, server_key, shard, config_path, as_json) -> None:
    """Inspect and change a running maglev through its control socket."""
    if shard and not control:
        from maglev.config import SHARD_NAME_RE, load_shard, shard_instance_name

        if config_path:
            conf, _ = load_shard(config_path, shard)
            control = conf.control.endpoint or endpoints.default_control(conf.instance.name)
            events = events or conf.control.events_endpoint
        elif SHARD_NAME_RE.fullmatch(shard):
            control = endpoints.default_control(shard_instance_name(instance, shard))
        else:
            raise click.BadParameter(f"{shard!r} is not a shard name", param_hint="--shard")
    control = control or endpoints.default_control(instance)
    ctx.obj = {"control": control, "events": events, "timeout": timeout, "client_key": client_key,
               "server_key": server_key, "json": as_json}


@ctl.command()
@json_opt
@click.pass_context
def status(ctx, as_json) -> None:
    """Generation, counts, last change, counters."""
    r = _call(ctx, "status", {}, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
        return
    lc = r.get("last_change") or {}
    click.echo(f"instance      {r['instance']} (pid {r['pid']}, up {r['uptime_s']:.0f} s)")
    click.echo(f"generation    {r['generation']} ({'confirmed' if r['confirmed'] else 'NOT confirmed'} by every worker)")
    click.echo(f"vips          {r['vips']}, backends {r['backends']}, down {r['backends_down']}")
    if r["vips_all_down"]:
        click.echo(f"ALL DOWN      {', '.join(r['vips_all_down'])} (packets dropped)")
    if lc:
        click.echo(f"last change   {lc['op']} -> generation {lc['generation']} in {lc['apply_ms']:.2f} ms")
    click.echo(f"config        {r['source'] or '-'} (state {r['state'] or '-'}{', resumed' if r['resumed'] else ''})")
    if r.get("endpoints"):
        click.echo(f"endpoints     {', '.join(r['endpoints'])}")
    c = r["counters"]
    click.echo(f"changes       {c['changes_applied']} applied, {c['changes_rejected']} rejected, "
               f"{c['unconfirmed']} unconfirmed; health transitions {c['health_transitions']}")
    for line in status_lines(r):  # table fingerprints, controller (maglev_cli.ctl_scaleout)
        click.echo(line)


@ctl.command()
@json_opt
@click.pass_context
def vips(ctx, as_json) -> None:
    """One line per VIP."""
    r = _call(ctx, "vips", {}, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
        return
    _table(r, [("vip", "VIP"), ("encap", "ENCAP"), ("table_size", "M"), ("health_check", "CHECK"),
               ("backends", "BACKENDS"), ("backends_down", "DOWN"), ("backends_drained", "DRAINED"),
               ("all_down", "ALL-DOWN")])


@ctl.command()
@click.argument("vip")
@json_opt
@click.pass_context
def backends(ctx, vip, as_json) -> None:
    """Backends of VIP: health, weight, table entries and share."""
    r = _call(ctx, "backends", {"vip": vip}, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
        return
    click.echo(f"{r['vip']}  M={r['table_size']}  generation {r['generation']}")
    if r.get("tree"):
        _pool_tree(r["tree"])
        return
    rows = [{**b, "share": f"{b['share'] * 100:.2f}%"} for b in r["backends"]]
    _table(rows, [("backend", "BACKEND"), ("address", "ADDRESS"), ("weight", "WEIGHT"), ("health", "HEALTH"),
                  ("entries", "ENTRIES"), ("share", "SHARE"), ("packets", "PACKETS"), ("health_detail", "DETAIL")])


def _pool_tree(tree: list[dict]) -> None:
    """A pooled VIP's backends as the tree of its pools (``ctl backends``)."""
    lines: list[tuple[str, str, str, str, str, str]] = []

    def walk(node: dict, indent: str) -> None:
        if "pool" in node and "members" in node:
            role = "backup " if node["backup"] else ""
            extra = ""
            if node["backup_below_percent"] is not None:
                extra = f" backup below {node['backup_below_percent']}%" + (" (ACTIVE)" if node["backup_active"] else "")
            lines.append((f"{indent}{role}pool {node['pool']}", "" if node["backup"] else str(node["weight"]),
                          "", node["check"], f"healthy {node['healthy_share'] * 100:.0f}%{extra}", ""))
            for m in node["members"]:
                walk(m, indent + "  ")
            return
        lines.append((f"{indent}{node['backend']}", str(node["weight"]), str(node["effective_weight"]),
                      node["health"], f"{node['entries']} ({node['share'] * 100:.2f}%)", node["health_detail"]))

    for top in tree:
        walk(top, "")
    head = ("TREE", "WEIGHT", "EFFECTIVE", "HEALTH", "ENTRIES / STATE", "DETAIL")
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(5)]
    for row in [head, *lines]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[5])


@ctl.command()
@json_opt
@click.pass_context
def health(ctx, as_json) -> None:
    """Every health verdict the config manager holds."""
    r = _call(ctx, "health", {}, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
        return
    now = time.time()
    _table([{**h, "up": "up" if h["up"] else "DOWN", "for": f"{now - h['since']:.0f}s"} for h in r],
           [("vip", "VIP"), ("backend", "BACKEND"), ("up", "STATE"), ("for", "FOR"), ("detail", "DETAIL")])


@ctl.command("set-weight")
@click.argument("vip")
@click.argument("backend")
@click.argument("weight", type=int)
@json_opt
@click.pass_context
def set_weight(ctx, vip, backend, weight, as_json) -> None:
    """Set BACKEND's weight (0 drains it)."""
    _change(ctx, "set-weight", {"vip": vip, "backend": backend, "weight": weight}, as_json)


@ctl.command()
@click.argument("vip")
@click.argument("backend")
@json_opt
@click.pass_context
def drain(ctx, vip, backend, as_json) -> None:
    """Weight 0: no new flows; established flows keep BACKEND."""
    _change(ctx, "drain", {"vip": vip, "backend": backend}, as_json)


@ctl.command("add-backend")
@click.argument("vip")
@click.argument("address")
@click.option("--weight", type=int, default=None, help="Default 1.")
@click.option("--name", default=None, help="Name hashed for the table (default: the address).")
@click.option("--mac", default=None, help="Next-hop MAC (encap l2 / vxlan).")
@click.option("--quic-server-id", default=None, metavar="HEX",
              help="QUIC VIPs: the server ID in the connection IDs this backend issues.")
@json_opt
@click.pass_context
def add_backend(ctx, vip, address, weight, name, mac, quic_server_id, as_json) -> None:
    """Add a backend to VIP."""
    b: dict[str, Any] = {"address": address}
    for k, v in (("weight", weight), ("name", name), ("mac", mac), ("quic_server_id", quic_server_id)):
        if v is not None:
            b[k] = v
    _change(ctx, "add-backend", {"vip": vip, "backend": b}, as_json)


@ctl.command("remove-backend")
@click.argument("vip")
@click.argument("backend")
@force_opt
@json_opt
@click.pass_context
def remove_backend(ctx, vip, backend, force, as_json) -> None:
    """Remove BACKEND (name or address) from VIP (its last one only with --force)."""
    _change(ctx, "remove-backend", _forced({"vip": vip, "backend": backend}, force), as_json)


@ctl.command()
@click.argument("file", type=click.Path())  # a directory is the loader's one-line error
@force_opt
@click.option("--dry-run", is_flag=True,
              help="Validate and build FILE's tables without committing; print per VIP the share of "
                   "table entries and established flows (counted in the shared connection tables, else "
                   "estimated) that would move.")
@json_opt
@click.pass_context
def apply(ctx, file, force, dry_run, as_json) -> None:
    """Replace the whole config with FILE (validated here and by the server; all or nothing).

    A file that cannot be read, is not UTF-8 TOML or is not a valid config exits 2 with
    one ``path: message`` line per problem before anything is sent.  A FILE without VIPs,
    or leaving a VIP without backends, needs --force."""
    from maglev.config import Config, read_document
    from maglev.errors import ConfigError

    try:
        data = read_document(file)
        Config.from_dict(data)  # the server's validator, so a bad file never reaches it
    except ConfigError as exc:
        if not (as_json or _opts(ctx)["json"]):
            raise  # one "maglev: error: path: message" line per problem, exit 2 (maglev_cli.main)
        first = exc.problems[0] if exc.problems else ""
        click.echo(json.dumps({"ok": False, "error": {
            "code": "invalid-config", "message": "; ".join(exc.problems),
            "field": first.split(": ", 1)[0] if ": " in first else "", "details": exc.problems}}))
        ctx.exit(2)
    if dry_run:
        r = _call(ctx, "preview-config", {"config": data}, as_json)
        if as_json or _opts(ctx)["json"]:
            click.echo(json.dumps(r))
            return
        from maglev_cli.table import print_preview

        click.echo(f"dry run against generation {r['generation']}: nothing committed "
                   f"({'differs from' if r['changed'] else 'same as'} the running config; "
                   f"tables built in {r['build_ms']:.2f} ms)")
        ct = r.get("conntrack") or {}
        if ct.get("used"):
            click.echo(f"connection tables: {ct['live']} live entries counted in {ct['tables']} worker tables "
                       f"in {ct['scan_ms']:.1f} ms ({ct['torn']} changing while read, skipped); a live scan, "
                       f"not a snapshot: exact up to {ct.get('changed_during_scan', 0)} entries the workers "
                       f"inserted or moved meanwhile")
        else:
            click.echo(f"connection tables not counted: {ct.get('why', 'unknown')}; flows are estimated")
        print_preview(r["vips"])
        return
    _change(ctx, "replace-config", _forced({"config": data}, force), as_json)


@ctl.command()
@force_opt
@json_opt
@click.pass_context
def reload(ctx, force, as_json) -> None:
    """Re-read the config file the server was started with (--force: even when it removes
    every VIP or every backend of a VIP)."""
    _change(ctx, "reload", _forced({}, force), as_json)


@ctl.command("config")
@json_opt
@click.pass_context
def show_config(ctx, as_json) -> None:
    """Print the running config (TOML, or JSON with --json)."""
    r = _call(ctx, "get-config", {}, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
        return
    from maglev.config import Config, dump_toml

    click.echo(dump_toml(Config.from_dict(r["config"])), nl=False)


@ctl.command()
@click.option("--topic", "topics", multiple=True,
              help="Only these topics (health, generation, config, alert, bgp); repeatable.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N events.")
@click.option("--seconds", type=FiniteFloatRange(0.1), default=None, help="Stop after S seconds.")
@json_opt
@click.pass_context
def watch(ctx, topics, count, seconds, as_json) -> None:
    """Stream events (one line each; JSON lines with --json) until Ctrl-C.  When maglev
    stops or restarts, a line on stderr says so and the watch waits for it to come back."""
    from maglev.control.client import EventSubscriber

    o = _opts(ctx)
    as_json = as_json or o["json"]
    ep = o["events"] or endpoints.events_for(o["control"])
    if ep.startswith("ipc://") and not os.path.exists(ep[6:]):
        click.echo(f"maglev ctl: watch: no events socket at {ep[6:]} (is maglev running?)", err=True)
        ctx.exit(2)
    deadline = time.monotonic() + seconds if seconds else None
    n = 0
    lost = False
    with EventSubscriber(ep, topics or ("",), client_key_file=o["client_key"], server_key=o["server_key"]) as sub:
        try:
            while count is None or n < count:
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                ev = sub.recv(min(left, 1.0))
                for change in sub.link_changes():
                    if change == "down":
                        lost = True
                        click.echo(f"maglev ctl: watch: the events socket closed ({ep}): maglev stopped or is "
                                   "restarting; waiting for it (Ctrl-C to stop)", err=True)
                    else:
                        click.echo(f"maglev ctl: watch: connected{' again' if lost else ''} ({ep})", err=True)
                        lost = False
                if ev is None:
                    continue
                n += 1
                topic, body = ev
                if as_json:
                    click.echo(json.dumps(body))
                else:
                    ts = time.strftime("%H:%M:%S")
                    kv = " ".join(f"{k}={_fmt(v)}" for k, v in body.items() if k not in ("v", "topic"))
                    click.echo(f"{ts} {topic:<10} {kv}")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


@ctl.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("name")
def keygen(directory, name) -> None:
    """Write a CURVE key pair NAME.key / NAME.key_secret into DIRECTORY (for tcp://)."""
    from maglev.control import curve

    pub, sec = curve.generate(directory, name)
    key = curve.load_keypair(sec).public.decode()
    click.echo(f"public key {key}\nwrote {pub} and {sec} (0600)")


# Observability subcommands (stats, trace) live in maglev_cli.ctl_obs.
from maglev_cli.ctl_obs import stats, trace  # noqa: E402

ctl.add_command(stats)
ctl.add_command(trace)

# Scale-out subcommands (drain-instance, resume-instance) live in maglev_cli.ctl_scaleout.
from maglev_cli.ctl_scaleout import drain_instance, resume_instance, status_lines  # noqa: E402

ctl.add_command(drain_instance)
ctl.add_command(resume_instance)
