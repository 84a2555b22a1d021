"""`maglev replay`: run a capture file through the data path (parse, VIP match, conntrack,
Maglev, encapsulation) and report what would have happened to every packet."""

from __future__ import annotations

import json
import os
import sys

import click

from maglev.native import ENGINES

# Progress bars only for files big enough to take a while.
PROGRESS_MIN_BYTES = 4 * 1024 * 1024


@click.command()
@click.argument("capture", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", required=True, type=click.Path(),
              help="maglev config (TOML) with the VIPs and backends.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write what would go on the wire (encapsulated packets, ICMP errors) as pcap.")
@click.option("--engine", type=click.Choice(ENGINES), default="c", show_default=True,
              help="C burst kernel or the pure-Python reference.")
@click.option("--ct-capacity", type=click.IntRange(1, 1 << 26),
              help="Connection-table entries (default: the config's conntrack.capacity).")
@click.option("--shard", default=None, metavar="NAME", help="With a sharded config: this [[shard]]'s VIPs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def replay(capture, config_path, out, engine, ct_capacity, shard, as_json) -> None:
    """Replay CAPTURE (pcap or pcapng) through the data path.

    Every packet is accounted for: packets_in == forwarded + sum(dropped).  Exit status 0,
    1 when the file was damaged part-way (the packets before the damage are reported),
    2 when it cannot be used at all.
    """
    from maglev import config as cfg
    from maglev.datapath.replay import format_summary
    from maglev.datapath.replay import replay as run

    conf = cfg.load_forwarder(config_path, shard)
    try:
        size = os.path.getsize(capture)
    except OSError:
        size = 0
    if size >= PROGRESS_MIN_BYTES and sys.stderr.isatty():
        with click.progressbar(length=size, label="replaying", file=sys.stderr) as bar:
            last = [0]

            def progress(pos: int) -> None:
                bar.update(max(pos - last[0], 0))
                last[0] = pos

            summary = run(capture, conf, out=out, engine=engine, ct_capacity=ct_capacity, progress=progress)
    else:
        summary = run(capture, conf, out=out, engine=engine, ct_capacity=ct_capacity)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(format_summary(summary))
    if summary["error"]:
        click.echo(f"maglev: error: {summary['error']}", err=True)
        sys.exit(1)
