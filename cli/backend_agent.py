"""`maglev backend-agent`: decapsulate GRE/IPIP for a backend whose kernel cannot."""

from __future__ import annotations

import json

import click

from maglev_cli.params import FiniteFloatRange


@click.command("backend-agent")
@click.option("--vip", "vips", multiple=True, required=True, metavar="ADDR",
              help="A VIP this backend serves (repeat for several; IPv4 or IPv6). Put on lo if missing.")
@click.option("--encap", type=click.Choice(["gre", "ipip"]), default="gre", show_default=True)
@click.option("--tun", default="mgdecap0", show_default=True, help="Name of the TUN device to create.")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), default="",
              help="Write the counters as JSON to this file every second and at exit.")
@click.option("--duration", type=FiniteFloatRange(0, 10**9), default=0.0,
              help="Stop after this many seconds (0 = until SIGTERM).")
@click.option("--engine", type=click.Choice(["c", "python"]), default=None,
              help="The packet loop: c (default; recvmmsg batches, no Python per packet) or the "
                   "pure-Python reference (env MAGLEV_AGENT_ENGINE).")
@click.option("--rt-prio", type=click.IntRange(0, 96), default=1, show_default=True,
              help="SCHED_FIFO base priority while lightly loaded (the agent takes this + 3); 0 = SCHED_OTHER.")
def backend_agent(vips, encap, tun, stats_path, duration, engine, rt_prio) -> None:
    """Read GRE (or IPIP) packets from a raw socket, check the inner packet is for a VIP,
    and hand it to this host's stack through a TUN device, so the kernel answers the
    client directly (direct server return).  Needs root."""
    import os

    from maglev.errors import ConfigError
    from maglev.lab.agent import serve

    if stats_path:  # before the TUN device and the VIPs on lo are set up, not at the first write
        folder = os.path.dirname(os.path.abspath(stats_path))
        if not os.path.isdir(folder):
            raise ConfigError([f"--stats {stats_path}: no such folder {folder}"])
    agent = serve(list(vips), encap, tun, stats_path, duration, engine or "", rt_prio)
    click.echo(json.dumps(dict(agent.counters), sort_keys=True), err=True)
