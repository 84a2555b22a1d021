"""`maglev conntrack list|drop`: the connection tables a `maglev run` keeps in /dev/shm
(`[conntrack] shared = true`) for the next run of the same instance to adopt
(docs/operations.md, "Removing an instance for good")."""

from __future__ import annotations

import json
import os

import click


@click.group("conntrack")
def conntrack() -> None:
    """Connection tables kept in /dev/shm across restarts."""


@conntrack.command("list")
@click.option("--instance", default=None, help="Only this instance's tables.")
@click.option("--json", "as_json", is_flag=True)
def list_tables(instance, as_json) -> None:
    """Tables kept in /dev/shm: name, instance, size in memory, in use or not."""
    from maglev.rings import conntrack_shm as cs

    if instance is not None:
        cs.check_instance_name(instance)
    rows = []
    for n in cs.list_segments(instance):
        path = os.path.join(cs.SHM_DIR, n)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            continue
        m = cs._CT_RE.match(n)
        rows.append({"name": n, "instance": m["instance"], "tag": m["tag"], "worker": int(m["index"]),
                     "bytes": st.st_blocks * 512, "in_use": cs._held(path)})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no connection tables in /dev/shm" + (f" for instance {instance!r}" if instance else ""))
        return
    for r in rows:
        click.echo(f"{r['name']:<36}{r['bytes'] / 2**20:8.1f} MiB  {'in use' if r['in_use'] else 'kept for adoption'}")


@conntrack.command("drop")
@click.option("--instance", required=True, help="The [instance] name whose tables to remove.")
@click.option("--tag", default=None, help="Only the tables of this identity (8 hex digits of the name).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True)
def drop(instance, tag, dry_run, as_json) -> None:
    """Remove an instance's connection tables from /dev/shm (frees their memory; the next
    run starts with empty tables).  Refuses while a run of the instance is up."""
    from maglev.rings.conntrack_shm import drop_instance

    d = drop_instance(instance, tag, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"instance": instance, "dry_run": dry_run, "removed": d.names, "bytes": d.bytes,
                               "temporaries": d.temporaries}))
        return
    verb = "would remove" if dry_run else "removed"
    if not d.names and not d.temporaries:
        click.echo(f"no connection tables of instance {instance!r} in /dev/shm; nothing {verb}")
        return
    for n in d.names:
        click.echo(f"{verb} /dev/shm/{n}")
    for n in d.temporaries:
        click.echo(f"{verb} /dev/shm/{n} (temporary of a killed start)")
    click.echo(f"{verb} {len(d.names)} table(s), {d.bytes / 2**20:.1f} MiB of memory")
