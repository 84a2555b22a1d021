"""`maglev top`: a live view of a running maglev, refreshed once a second.

Each frame is the difference of two ``stats`` snapshots from the control socket
(maglev/observability/metrics.py): packets and bits per second per VIP and backend, drops by
reason, per-worker load (packets per second, share, average burst, rx ring fill), backend
health, BGP state and actor restarts.  ``--once`` prints a single plain-text frame (two
snapshots ``--interval`` apart) and exits -- what scripts and tests use.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from maglev_cli.params import FiniteFloatRange


def _rate(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:6.2f}{unit}"
    return f"{v:7.0f}"


def _d(cur: float, prev: float, dt: float) -> float:
    """Per-second rate of a counter; a counter that went back (a worker's per-VIP
    counters restart at a tables switch, a restarted actor) counts from zero."""
    if dt <= 0:
        return 0.0
    return (cur - prev if cur >= prev else cur) / dt


def render_frame(prev: dict[str, Any], cur: dict[str, Any], dt: float, width: int = 100) -> list[str]:
    """Lines of one frame from two snapshots ``dt`` seconds apart."""
    t0, t1 = prev["totals"], cur["totals"]
    lines = [
        f"maglev top - {cur.get('instance') or '-'}  generation {cur['generation']}  workers {cur['workers_n']}"
        + (f"  up {cur['uptime_s']:.0f}s" if cur.get("uptime_s") else "")
        + f"  {time.strftime('%H:%M:%S', time.localtime(cur['time']))}",
        f"in  {_rate(_d(t1['packets_in'], t0['packets_in'], dt))} pps {_rate(8 * _d(t1['bytes_in'], t0['bytes_in'], dt))}bps"
        f"   fwd {_rate(_d(t1['forwarded'], t0['forwarded'], dt))} pps"
        f"   out {_rate(8 * _d(t1['bytes_out'], t0['bytes_out'], dt))}bps"
        f"   drop {_rate(_d(t1['dropped'], t0['dropped'], dt))} pps",
        "",
        f"{'DROP REASON':<28}{'pps':>10}{'total':>14}",
    ]
    drops = cur["drops"]
    if not drops:
        lines.append("  (none)")
    for reason, n in sorted(drops.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {reason:<26}{_rate(_d(n, prev['drops'].get(reason, 0), dt)):>10}{n:>14}")
    lines += ["", f"{'WORKER':<8}{'pps':>10}{'share':>8}{'avg burst':>11}{'rx ring':>10}{'generation':>12}{'ct entries':>12}"]
    pw = {w["worker"]: w for w in prev["workers"]}
    rates = []
    for w in cur["workers"]:
        p = pw.get(w["worker"], w)
        rates.append(_d(w["packets_in"], p["packets_in"], dt))
    tot = sum(rates) or 1.0
    for w, r in zip(cur["workers"], rates, strict=True):
        p = pw.get(w["worker"], w)
        b = w["bursts"] - p["bursts"] if w["bursts"] >= p["bursts"] else w["bursts"]
        n = w["packets_in"] - p["packets_in"] if w["packets_in"] >= p["packets_in"] else w["packets_in"]
        ct = (w.get("conntrack") or {}).get("entries", "-")
        lines.append(f"  {w['worker']:<6}{_rate(r):>10}{100 * r / tot:>7.1f}%{(n / b if b else 0):>11.1f}"
                     f"{100 * w['rx_ring']['occupancy']:>9.1f}%{w['tables_generation']:>12}{ct!s:>12}")
    lines += ["", f"{'VIP / BACKEND':<34}{'pps':>10}{'bps':>10}{'health':>8}{'weight':>8}{'entries':>9}"
                  f"{'prio':>6}{'shed/s':>10}"]
    pv = {v["vip"]: v for v in prev["vips"]}
    for v in cur["vips"]:
        p = pv.get(v["vip"], v)
        lines.append(f"{v['vip']:<34}{_rate(_d(v['packets'], p['packets'], dt)):>10}"
                     f"{_rate(8 * _d(v['bytes'], p['bytes'], dt)):>10}{'':>8}{'':>8}{v['table_size']:>9}"
                     f"{v.get('priority', 0):>6}{_rate(_d(v.get('shed', 0), p.get('shed', 0), dt)):>10}")
        pb = {b["backend"]: b for b in p["backends"]}
        for b in v["backends"]:
            q = pb.get(b["backend"], b)
            lines.append(f"  {b['backend']:<32}{_rate(_d(b['packets'], q['packets'], dt)):>10}"
                         f"{_rate(8 * _d(b['bytes'], q['bytes'], dt)):>10}{b['health']:>8}{b['weight']:>8}"
                         f"{b['entries']:>9}" + (f"  pool {b['pool']}" if b.get("pool") else ""))
    qc = sum(w.get("quic_cid_routed", 0) for w in cur["workers"])
    qh = sum(w.get("quic_hashed", 0) for w in cur["workers"])
    if qc or qh:
        pqc = sum(w.get("quic_cid_routed", 0) for w in prev["workers"])
        pqh = sum(w.get("quic_hashed", 0) for w in prev["workers"])
        lines.append(f"quic: by connection ID {_rate(_d(qc, pqc, dt))}/s ({qc})   hashed {_rate(_d(qh, pqh, dt))}/s ({qh})")
    lines.append("")
    bgp = cur.get("bgp")
    lines.append(f"bgp: {bgp if bgp else 'not running'}")
    r = {k: v for k, v in (cur.get("restarts") or {}).items() if v}
    cl = {k: sum(w.get(k, 0) for w in cur["workers"]) for k in ("cluster_matched", "cluster_in", "backup_out")}
    if any(cl.values()):
        lines.append(f"clusters: matched {cl['cluster_matched']}   gre-in {cl['cluster_in']}   "
                     f"backup-out {cl['backup_out']}")
    lines.append(f"restarts: {r if r else 'none'}   fallback {cur['steering']['fallback']}"
                 f"   backpressure {cur['steering']['backpressure']}   shed {cur['steering'].get('shed', 0)}"
                 f"   owner-stalled {cur['steering'].get('owner_stalled', 0)}")
    return [ln[:width] for ln in lines]


@click.command("top")
@click.option("--control", envvar="MAGLEV_CONTROL", default="",
              help="Control endpoint (default: the --instance's socket).")
@click.option("--instance", envvar="MAGLEV_INSTANCE", default="mg1", show_default=True)
@click.option("--interval", type=FiniteFloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between frames.")
@click.option("--once", is_flag=True, help="Print one plain-text frame and exit.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N frames.")
@click.option("--timeout", type=FiniteFloatRange(0.1, 600), default=5.0, show_default=True)
def top(control, instance, interval, once, count, timeout) -> None:
    """Live view: pps/bps per VIP and backend, drops, workers, health, BGP (Ctrl-C quits)."""
    import shutil

    from maglev.control import endpoints
    from maglev.control.client import ControlClient
    from maglev.control.protocol import ProtocolError

    ep = control or endpoints.default_control(instance)
    frames = 1 if once else count
    try:
        with ControlClient(ep, timeout=timeout) as c:
            prev, t_prev = c.call("stats"), time.monotonic()
            n = 0
            while frames is None or n < frames:
                time.sleep(interval)
                cur, t = c.call("stats"), time.monotonic()
                width = shutil.get_terminal_size((120, 40)).columns
                lines = render_frame(prev, cur, t - t_prev, width if not once else 200)
                if once:
                    click.echo("\n".join(lines))
                else:
                    sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
                    sys.stdout.flush()
                prev, t_prev = cur, t
                n += 1
    except ProtocolError as exc:
        raise click.ClickException(f"top: {exc.code}: {exc.message}") from None
    except KeyboardInterrupt:
        pass
