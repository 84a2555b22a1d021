"""`maglev ctl stats` and `maglev ctl trace`: the observability subcommands of `maglev ctl`.

Both are served by the config manager from shared memory (maglev/observability/ops.py);
``--json`` prints the server's result unchanged.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from maglev_cli.ctl_common import call as _call
from maglev_cli.ctl_common import json_opt
from maglev_cli.ctl_common import opts as _opts
from maglev_cli.ctl_common import table as _table
from maglev_cli.params import FiniteFloatRange


def _n(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}" if isinstance(v, float) else str(v)


def stats_text(s: dict[str, Any]) -> list[str]:
    """A human summary of a stats snapshot (counters since start)."""
    t = s["totals"]
    lines = [
        f"instance {s.get('instance') or '-'}  generation {s['generation']}  workers {s['workers_n']}"
        + (f"  up {s['uptime_s']:.0f}s" if s.get("uptime_s") else ""),
        f"packets  in {_n(t['packets_in'])}  forwarded {_n(t['forwarded'])}  dropped {_n(t['dropped'])}  "
        f"tx {_n(t['tx_packets'])}  bytes in {_n(t['bytes_in'])} out {_n(t['bytes_out'])}",
        f"steering fallback {s['steering']['fallback']}  backpressure {s['steering']['backpressure']}  "
        f"unparsed {s['steering']['unparsed']}  no-free {s['steering']['no_free']}  "
        f"shed {s['steering'].get('shed', 0)}  owner-stalled {s['steering'].get('owner_stalled', 0)}",
    ]
    if s["drops"]:
        lines.append("drops    " + "  ".join(f"{k}={v}" for k, v in s["drops"].items()))
    cl = {k: sum(w.get(k, 0) for w in s["workers"]) for k in ("cluster_matched", "cluster_in", "backup_out")}
    if any(cl.values()):
        lines.append(f"clusters matched {cl['cluster_matched']}  gre-in {cl['cluster_in']}  "
                     f"backup-out {cl['backup_out']}")
    r = s["rings"]
    lines.append(f"rings    free {r['free']['count']}/{r['frames']}  sent {r['sent']['count']}/{r['sent']['size']}")
    for w in s["workers"]:
        ct = w.get("conntrack") or {}
        lines.append(
            f"worker {w['worker']:<3} in {_n(w['packets_in'])} fwd {_n(w['forwarded'])} "
            f"drop {_n(sum(w['dropped'].values()))} gen {w['tables_generation']} "
            f"rx {w['rx_ring']['count']}/{w['rx_ring']['size']} tx {w['tx_ring']['count']}/{w['tx_ring']['size']}"
            + (f" | ct entries~{ct['entries']} hits {ct['hits']} inserts {ct['inserts']} "
               f"evictions {ct['evictions']} full {ct['insert_failed']}" if ct else "")
        )
    quic = [(w.get("quic_cid_routed", 0), w.get("quic_hashed", 0)) for w in s["workers"]]
    if any(a or b for a, b in quic):
        lines.append(f"quic     routed by connection ID {sum(a for a, _ in quic)}  hashed {sum(b for _, b in quic)}")
    for v in s["vips"]:
        lines.append(f"vip {v['vip']}  {v['encap']}  M={v['table_size']}  packets {_n(v['packets'])}  "
                     f"entries/backend {v['entries_min']}..{v['entries_max']}  priority {v.get('priority', 0)}"
                     + (f"  shed {_n(v['shed'])}" if v.get("shed") else ""))
        for b in v["backends"]:
            lines.append(f"    {b['backend']:<24} {b['health']:<5} w={b['weight']:<3} entries {b['entries']:<7} "
                         f"packets {_n(b['packets'])}")
    if s.get("restarts"):
        r = {k: v for k, v in s["restarts"].items() if v}
        lines.append(f"restarts {r if r else 'none'}")
    if s.get("bgp"):
        lines.append(f"bgp      {s['bgp']}")
    tr = s.get("tracer") or {}
    if tr.get("marked"):
        lines.append(f"tracer   marked {tr['marked']} collected {tr['finished']} lost {tr['lost']}")
    return lines


@click.command()
@json_opt
@click.pass_context
def stats(ctx, as_json) -> None:
    """Counters: per VIP, backend, worker, drop reason; rings, conntrack, tables."""
    r = _call(ctx, "stats", {}, as_json)
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps(r))
        return
    for line in stats_text(r):
        click.echo(line)


def _ms(a: int, b: int) -> str:
    return f"{(b - a) / 1e6:.3f}" if a and b and b >= a else "-"


@click.command()
@click.option("--vip", default=None, help="Trace packets to this VIP: ADDR[:PORT][/PROTO].")
@click.option("--src", default=None, help="...from this client: ADDR[/PLEN][:PORT].")
@click.option("--count", type=click.IntRange(0, 1_000_000), default=None,
              help="Packets to trace (default 10 with --vip/--src).")
@click.option("--seconds", type=FiniteFloatRange(0, 86400), default=10.0, show_default=True,
              help="Give up after this long.")
@click.option("--sample-every", type=click.IntRange(0, 1 << 30), default=None,
              help="Change the sampling rate: 1 in N packets (0 = off).")
@json_opt
@click.pass_context
def trace(ctx, vip, src, count, seconds, sample_every, as_json) -> None:
    """Mark matching packets in steering; each becomes a trace (steering, worker, muxer
    spans).  Prints the traced packets as they come home.  No option: tracer status."""
    args: dict[str, Any] = {}
    if vip:
        args["vip"] = vip
    if src:
        args["src"] = src
    if vip or src:
        args["count"] = 10 if count is None else count
        args["seconds"] = seconds
    elif count:
        raise click.UsageError("--count needs --vip and/or --src")
    if sample_every is not None:
        args["sample_every"] = sample_every
    before = {p["trace_id"] for p in _call(ctx, "trace", {}, as_json)["packets"]} if args.get("count") else set()

    def fresh(packets: list[dict[str, Any]]) -> list[dict[str, Any]]:  # this filter's, not sampled ones
        return [p for p in packets if p["trace_id"] not in before and p.get("marked_by") == "filter"]

    r = _call(ctx, "trace", args, as_json)
    armed = r.get("armed")
    want = int(args.get("count", 0))
    new: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while want:
        new = fresh(r["packets"])
        if len(new) >= want or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
        r = _call(ctx, "trace", {}, as_json)
    r["armed"] = armed
    if as_json or _opts(ctx)["json"]:
        click.echo(json.dumps({**r, "traced": new}))
        return
    st = r["status"]
    if r.get("armed"):
        click.echo(f"armed request {st['seq']}: {json.dumps(r['armed'])}")
    click.echo(f"tracer: marked {st['marked']} collected {st['finished']} lost {st['lost']} "
               f"sampling {'1 in ' + str(st['sample_every']) if st['sample_every'] else 'config'}")
    rows = [{"trace": p["trace_id"], "vip": p.get("vip", "-"), "backend": p.get("backend", "-"),
             "verdict": p["verdict"], "ct": p["conntrack"], "worker": p["worker"],
             "steer_ms": _ms(p["rx_ts_ns"], p["ts_steer_ns"]), "queue_ms": _ms(p["ts_steer_ns"], p["ts_worker_ns"]),
             "worker_us": f"{p['worker_ns'] / 1e3:.1f}", "tx_ms": _ms(p["ts_worker_ns"] + p["worker_ns"], p["ts_tx_ns"])}
            for p in (new if want else r["packets"][-10:])]
    if want and len(new) < want:
        click.echo(f"{len(new)} of {want} packets traced within {seconds:g}s (is matching traffic arriving?)")
    _table(rows, [("trace", "TRACE ID"), ("vip", "VIP"), ("backend", "BACKEND"), ("verdict", "VERDICT"),
                  ("ct", "CONNTRACK"), ("worker", "W"), ("steer_ms", "STEER ms"), ("queue_ms", "QUEUE ms"),
                  ("worker_us", "WORKER us"), ("tx_ms", "TX ms")])
