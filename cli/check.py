"""`maglev check`: validate a config file as `maglev run` and a reload would, changing nothing.

Exit 0 with one summary line (or ``--json``) when the file would be accepted; exit 2 with one
``maglev: error: <path>: <problem>`` line per problem otherwise (``--json``: an object with
``ok: false`` and the problems on stdout, still exit 2).  Besides the validator it builds
every VIP's tables, as the supervisor does before it starts anything, so a file that
validates but cannot be served is refused here too."""

from __future__ import annotations

import json
import os

import click


def _tables(cfg: object) -> None:
    from maglev.datapath.tables import build_tables
    from maglev.errors import ConfigError

    try:
        build_tables(cfg)  # type: ignore[arg-type]
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError, OSError) as exc:  # validated, yet not buildable
        raise ConfigError([f"tables: cannot be built for this config: {type(exc).__name__}: {exc}"]) from None


@click.command("check")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=True))
@click.option("--shard", default="", help="Check only this shard of a sharded file (as `maglev run --shard`).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def check(config_path: str, shard: str, as_json: bool) -> None:
    """Validate CONFIG (a maglev TOML file) without running anything."""
    from maglev import config as cfgmod
    from maglev.control.curve import check_key_files
    from maglev.errors import ConfigError

    try:
        if shard:
            conf, _ = cfgmod.load_shard(config_path, shard)
            cfgmod.check_rereadable(config_path)
            configs = [conf]
        else:
            os.environ.pop(cfgmod.SHARD_ENV, None)  # the whole file, every shard
            conf = cfgmod.load(config_path)
            cfgmod.check_rereadable(config_path)  # as maglev run would after its start
            configs = [conf.shard_config(s.name) for s in conf.shards] if conf.shards else [conf]
        for c in configs:
            _tables(c)
            check_key_files(c)  # as the config manager loads them (tcp:// control)
    except ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "file": config_path, "problems": exc.problems}))
            for p in exc.problems:
                click.echo(f"maglev: error: {p}", err=True)
            raise SystemExit(2) from None
        raise
    vips = sum(len(c.vips) for c in configs)
    backends = sum(len(v.backends) for c in configs for v in c.vips)
    out = {"ok": True, "file": config_path, "instance": conf.instance.name, "vips": vips, "backends": backends,
           "shards": [s.name for s in conf.shards] if not shard else [shard]}
    if as_json:
        click.echo(json.dumps(out))
        return
    shards = f", shards {', '.join(out['shards'])}" if conf.shards or shard else ""
    click.echo(f"{config_path}: ok: instance {out['instance']}, {vips} VIP(s), {backends} backend(s){shards}")
