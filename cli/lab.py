"""`maglev lab up|down|status`: the namespace lab (client, router, maglev, backends)."""

from __future__ import annotations

import json
import sys

import click

from maglev_cli.params import FiniteFloatRange


def _lab(state_dir: str | None):
    from pathlib import Path

    from maglev.lab.topology import STATE_DIR, Lab

    return Lab(Path(state_dir) if state_dir else STATE_DIR)


def _weights(text: str, n: int) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        w = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint="--weights") from None
    if len(w) != n:
        raise click.BadParameter(f"{len(w)} weights for {n} backends", param_hint="--weights")
    return w


def print_summary(state: dict, as_json: bool) -> None:
    from maglev.lab.topology import summary

    s = summary(state)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    what = "already up" if s["already_up"] else "up"
    click.echo(f"lab {s['prefix']} {what}: encap {s['encap']}, {len(s['backends'])} backends")
    click.echo(f"  client   {s['namespaces']['client']:<16} {s['client']['ipv4']}  {s['client']['ipv6']}")
    click.echo(f"  router   {s['namespaces']['router']:<16} {', '.join(s['router']['ipv4'])}")
    click.echo(f"  maglev   {s['namespaces']['maglev']:<16} {s['maglev']['ipv4']}  {s['maglev']['ipv6']}"
               f"  (afpacket:{s['maglev']['iface']}{', forwarder running' if s['forwarder'] else ', no forwarder'})")
    for b in s["backends"]:
        click.echo(f"  {b['name']:<8} {b['ns']:<16} {b['ipv4']}  {b['ipv6']}  weight {b['weight']}")
    click.echo(f"  VIPs     {s['vips']['ipv4']}  {s['vips']['ipv6']}  (HTTP on port {s['vips']['http_port']})")
    ns = s["namespaces"]["client"]
    click.echo(f"try: ip netns exec {ns} curl -s http://{s['vips']['ipv4']}/")


@click.group()
def lab() -> None:
    """Build or remove the namespace lab (needs root)."""


@lab.command()
@click.option("--backends", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--encap", type=click.Choice(["gre", "ipip", "vxlan", "l2"]), default="gre", show_default=True)
@click.option("--weights", default="", help="Comma-separated backend weights (default all 1).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="maglev run --workers.")
@click.option("--ring", type=click.Choice(["v3", "v2"]), default=None,
              help="AF_PACKET ring of the forwarder (default: the driver's, TPACKET_V3).")
@click.option("--mtu", type=click.IntRange(1280, 9000), default=1500, show_default=True,
              help="MTU of the server links (and the forwarder's); 9000 = a jumbo fabric.")
@click.option("--no-forwarder", is_flag=True, help="Build the topology without starting `maglev run`.")
@click.option("--wait", "wait_s", type=FiniteFloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for the lab to answer.")
@click.option("--state-dir", default=None, help="Where the lab state lives (default /run/maglev-lab).")
@click.option("--prefix", default="mglab", show_default=True, help="Namespace name prefix (for several labs).")
@click.option("--json", "as_json", is_flag=True, help="Print namespaces, addresses and VIPs as JSON.")
@click.option("--instances", type=click.IntRange(1, 8), default=1, show_default=True,
              help="maglev instances (with --bgp: behind a BIRD router doing ECMP; docs/scaleout.md).")
@click.option("--bgp", is_flag=True, help="Routers learn the VIPs over BGP from every instance (BIRD 2).")
def up(backends, encap, weights, workers, ring, mtu, no_forwarder, wait_s, state_dir, prefix, as_json,
       instances, bgp) -> None:
    """Create the lab: client, router, maglev and N backend namespaces, HTTP servers,
    decapsulation, and `maglev run --nic afpacket:eth0`.  Harmless when already up."""
    from maglev.lab.topology import LabSpec

    spec = LabSpec(backends=backends, encap=encap, weights=_weights(weights, backends),
                   forwarder=not no_forwarder, workers=workers, ring=ring or "", prefix=prefix, mtu=mtu)
    lab_ = _lab(state_dir)
    if instances > 1 and not bgp:
        raise click.BadParameter("several instances need --bgp (the router learns them over BGP)",
                                 param_hint="--instances")
    if bgp:  # maglev/lab/scaleout.py
        from maglev.lab.scaleout import ScaleoutLab

        lab_ = ScaleoutLab(lab_.state_dir)
        spec.extra["instances"] = instances
    if state_dir:
        spec.state_dir = lab_.state_dir
    state = lab_.up(spec, wait_s=wait_s)
    print_summary(state, as_json)
    if bgp and not as_json:
        from maglev.lab.scaleout import summary_lines

        click.echo("\n".join(summary_lines(state)))


@lab.command()
@click.option("--state-dir", default=None)
@click.option("--json", "as_json", is_flag=True)
def down(state_dir, as_json) -> None:
    """Remove everything `maglev lab up` made (processes by PID, namespaces).  Harmless
    when nothing is up."""
    result = _lab(state_dir).down()
    if as_json:
        click.echo(json.dumps(result))
    elif not result["was_up"]:
        click.echo("no lab is up")
    else:
        click.echo(f"lab down: stopped {result['stopped_processes']} processes, "
                   f"removed {len(result['removed_namespaces'])} namespaces")


@lab.command()
@click.option("--state-dir", default=None)
@click.option("--json", "as_json", is_flag=True)
def status(state_dir, as_json) -> None:
    """Show the lab that is up (exit 1 when none is)."""
    lab_ = _lab(state_dir)
    if lab_.load() is None or not lab_.is_up():
        click.echo("no lab is up" if not as_json else "null")
        sys.exit(1)
    print_summary(lab_.state, as_json)
    if lab_.state.get("instances") and not as_json:  # a scale-out lab (maglev/lab/scaleout.py)
        from maglev.lab.scaleout import summary_lines

        click.echo("\n".join(summary_lines(lab_.state)))
