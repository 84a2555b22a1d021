"""`maglev whereis SRC:PORT DST:PORT/PROTO`: which backend a flow goes to, and why.

With ``--config FILE`` the answer is computed offline from that config (every backend
healthy); otherwise it comes from the running instance's control socket (the tables now
published).  Both use the data path's own C code (maglev/observability/whereis.py).
"""

from __future__ import annotations

import json

import click

from maglev_cli.params import FiniteFloatRange


@click.command("whereis")
@click.argument("src")
@click.argument("dst")
@click.option("--config", "config_path", type=click.Path(),
              help="Answer offline from this TOML config (every backend healthy).")
@click.option("--control", envvar="MAGLEV_CONTROL", default="",
              help="Control endpoint of a running maglev (default: the --instance's socket).")
@click.option("--instance", envvar="MAGLEV_INSTANCE", default="mg1", show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=0,
              help="With --config: also say which of N workers owns the flow.")
@click.option("--timeout", type=FiniteFloatRange(0.1, 600), default=5.0, show_default=True)
@click.option("--quic-cid", default=None, metavar="HEX",
              help="Ask about a QUIC short-header packet with this destination connection ID (UDP).")
@click.option("--shard", default=None, metavar="NAME", help="With a sharded config: this [[shard]]'s VIPs.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def whereis(src, dst, config_path, control, instance, workers, timeout, quic_cid, shard, as_json) -> None:
    """Which backend the flow SRC:PORT -> DST:PORT/PROTO goes to, and why (Maglev table
    slot, generation, owning worker).  IPv6 as [ADDR]:PORT."""
    from maglev.observability.whereis import parse_cid, parse_flow, whereis_config

    flow = parse_flow(src, dst)
    cid = parse_cid(quic_cid) if quic_cid is not None else None
    if config_path:
        from maglev.config import load_forwarder

        ans = whereis_config(load_forwarder(config_path, shard), flow, workers=workers, quic_cid=cid)
    else:
        from maglev.control import endpoints
        from maglev.control.client import ControlClient
        from maglev.control.protocol import ProtocolError

        ep = control or endpoints.default_control(instance)
        try:
            with ControlClient(ep, timeout=timeout) as c:
                args = {"src": src, "dst": dst} | ({"quic_cid": quic_cid} if quic_cid is not None else {})
                ans = c.call("whereis", args)
        except ProtocolError as exc:
            raise click.ClickException(f"whereis: {exc.code}: {exc.message}") from None
    if as_json:
        click.echo(json.dumps(ans))
        return
    click.echo(f"flow       {ans['flow']}")
    if "vip" not in ans:
        if "rule" in ans:
            click.echo(f"rule       {ans['rule']}")
        click.echo(f"verdict    {ans['verdict']}: {ans['why']}")
        return
    be = ans.get("backend", "-")
    if ans.get("backend_name"):
        be += f" ({ans['backend_name']})"
    click.echo(f"vip        {ans['vip']} ({ans['encap']}, M={ans['table_size']})")
    click.echo(f"backend    {be}   verdict {ans['verdict']}")
    if "pool" in ans:
        click.echo(f"pool       {ans['pool']}")
    sel = ans.get("selection_hash", ans["flow_hash"])
    click.echo(f"slot       {ans['slot']} = selection hash {sel} mod {ans['table_size']}")
    if "hash_inputs" in ans:
        click.echo(f"hashed on  {ans['hash_inputs']}")
    if "rule" in ans:
        click.echo(f"rule       {ans['rule']}")
    if "priority" in ans:
        click.echo(f"priority   {ans['priority']}: {ans['overload']}")
    if "quic" in ans:
        q = ans["quic"]
        click.echo(f"quic       {q['rule']}")
        click.echo(f"           server IDs {', '.join(f'{k}={v}' for k, v in q['server_ids'].items()) or 'none'}")
        click.echo(f"           this packet: {q['packet']}")
    if "worker" in ans:
        click.echo(f"worker     {ans['worker']} of {ans['workers']} (high 32 bits of the flow hash)")
    click.echo(f"generation {ans['generation']}   source: {ans['source']}")
    click.echo(f"why        {ans['why']}")
