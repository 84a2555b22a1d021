"""`maglev demo`: lab up, real HTTP requests through the VIP, the spread, lab down."""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.option("--requests", "n", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--backends", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--encap", type=click.Choice(["gre", "ipip", "vxlan", "l2"]), default="gre", show_default=True)
@click.option("--weights", default="", help="Comma-separated backend weights (default all 1).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--ipv6", is_flag=True, help="Send to the IPv6 VIP instead of the IPv4 one.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--ring", type=click.Choice(["v3", "v2"]), default=None,
              help="AF_PACKET ring of the forwarder (default: the driver's, TPACKET_V3).")
@click.option("--forwarder", type=click.Choice(["maglev", "relay"]), default="maglev", show_default=True,
              help="maglev = `maglev run` with the AF_PACKET NIC; relay = the lab's Python stand-in "
                   "(checks the lab itself, does no Maglev hashing).")
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (`maglev lab down` removes it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(n, backends, encap, weights, concurrency, ipv6, workers, ring, forwarder, keep, as_json) -> None:
    """Bring the namespace lab up, send N real HTTP requests from the client namespace to
    the VIP, show how they spread over the backends, and take the lab down again (also on
    Ctrl-C or failure).  Needs root."""
    from maglev.lab import topology as topo
    from maglev.lab.client import http_load
    from maglev_cli.lab import _weights

    spec = topo.LabSpec(backends=backends, encap=encap, weights=_weights(weights, backends),
                        forwarder=(forwarder == "maglev"), workers=workers, ring=ring or "")
    lab = topo.Lab()
    relay = None
    created = False
    err = sys.stderr
    try:
        if not as_json:
            click.echo(f"bringing the lab up ({backends} backends, {encap}) ...", file=err)
        # Decided before `up`: a lab we start is taken down again even when `up` fails.
        created = not (lab.load() is not None and lab.is_up())
        state = lab.up(spec, wait_s=60)
        if not created and (state["encap"] != encap or len(state["backends"]) != backends):
            click.echo(f"note: using the lab that is already up ({state['encap']}, "
                       f"{len(state['backends'])} backends)", file=err)
        if forwarder == "relay":
            from maglev.lab.relay import Relay

            relay = Relay(state["maglev"]["ns"], "eth0", [topo.VIP_V4, topo.VIP_V6], state["backends"],
                          state["encap"], state["maglev"]["mac"])
        vip = topo.VIP_V6 if ipv6 else topo.VIP_V4
        if as_json:
            result = http_load(state["client"]["ns"], vip, n, concurrency=concurrency, deadline_s=600)
        else:
            with click.progressbar(length=n, label=f"GET http://{'[' + vip + ']' if ipv6 else vip}/",
                                   file=err, show_pos=True) as bar:
                result = http_load(state["client"]["ns"], vip, n, concurrency=concurrency,
                                   deadline_s=600, progress=bar.update)
        report(result, state, vip, as_json)
        if result.ok != result.requests or result.requests < n:
            sys.exit(1)
    finally:
        if relay is not None:
            relay.stop()
        if created and not keep:
            lab.down()
            if not as_json:
                click.echo("lab down", file=err)


def report(result, state: dict, vip: str, as_json: bool) -> None:
    weights = {b["name"]: b["weight"] for b in state["backends"]}
    total_w = sum(weights.values()) or 1
    rows = []
    for name, w in weights.items():
        got = result.backends.get(name, 0)
        rows.append({
            "backend": name,
            "requests": got,
            "share": round(got / result.ok, 4) if result.ok else 0.0,
            "expected_share": round(w / total_w, 4),
        })  # fmt: skip
    if as_json:
        out = {"vip": vip, "encap": state["encap"], **result.to_dict(), "spread": rows}
        click.echo(json.dumps(out, indent=2))
        return
    d = result.to_dict()
    click.echo(f"{d['ok']}/{d['requests']} requests answered in {d['elapsed_s']} s "
               f"({d['requests_per_s']}/s, p50 {d['latency_ms']['p50']} ms, p99 {d['latency_ms']['p99']} ms)")
    if d["failures"]:
        click.echo("failures: " + ", ".join(f"{k} x{v}" for k, v in d["failures"].items()))
    for r in rows:
        bar = "#" * round(40 * r["share"])
        click.echo(f"  {r['backend']:<6} {r['requests']:>7}  {100 * r['share']:5.1f}%  "
                   f"(expected {100 * r['expected_share']:.1f}%)  {bar}")
