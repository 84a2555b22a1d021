"""Validation of ``[[pool]]`` and of the VIPs that point at pools (docs/config.md "Pools").

Called by the config parser (maglev/config.py) once the VIPs are parsed.  It parses the
pools, checks every reference (``vip[i].pool[j].name``, ``pool[k].pool[j].name``,
``pool[k].backup``), finds cycles and names them with the path of the edge that closes
each one, and then flattens every pooled VIP into ``Vip.backends`` (the leaf backends with
their static effective weights, maglev/pools.py) and ``Vip.leaves`` (where each sits and
which check probes it).  Every problem is a ``path: message`` of the parser; nothing is
flattened while a reference is missing or a cycle exists.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from maglev.config_model import Backend, Instance, Leaf, Pool, Vip, _ip_address
from maglev.config_rules import show

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
POOL_KEYS = {"name", "health", "backend", "pool", "backup", "backup_below_percent"}


def _pool(parser: Any, raw: Any, p: str) -> Pool:
    d = parser.table(raw, p, POOL_KEYS)
    name = parser.string(d, "name", p, "")
    if "name" not in d:
        parser.err(f"{p}.name", "is required")
    elif not _NAME_RE.fullmatch(name):
        parser.err(f"{p}.name", f"{show(name)} must be 1-63 characters of letters, digits, '_', '.', '-'")
    backends = tuple(parser.backend(b, f"{p}.backend[{j}]", "")
                     for j, b in enumerate(parser.array(d.get("backend", []), f"{p}.backend")))
    seen: dict[str, int] = {}
    for j, b in enumerate(backends):
        if b.address and b.key in seen:
            parser.err(f"{p}.backend[{j}]", f"duplicate backend {show(b.key)} (also backend[{seen[b.key]}])")
        seen.setdefault(b.key, j)
    pool = Pool(
        name=name,
        health=parser.health(d.get("health", {}), f"{p}.health"),
        backends=backends,
        pools=parser.pool_refs(d, p),
        backup=parser.string(d, "backup", p, ""),
        backup_below_percent=parser.integer(d, "backup_below_percent", p, 50, 1, 100),
    )
    if not pool.backends and not pool.pools:
        parser.err(p, f"pool {show(name)} has no backend and no pool")
    if pool.backup and pool.backup == name:
        parser.err(f"{p}.backup", f"pool {show(name)} cannot be its own backup")
    return pool


def _cycles(parser: Any, pools: list[Pool]) -> bool:
    """Report every cycle through members and backups; True when there is one."""
    index = {p.name: i for i, p in enumerate(pools)}

    def edges(i: int) -> list[tuple[str, str]]:  # (target, path of the edge)
        p = pools[i]
        out = [(r.name, f"pool[{i}].pool[{j}].name") for j, r in enumerate(p.pools)]
        if p.backup:
            out.append((p.backup, f"pool[{i}].backup"))
        return [(t, e) for t, e in out if t in index]

    WHITE, GREY, BLACK = 0, 1, 2
    color = [WHITE] * len(pools)
    found = False
    for start in range(len(pools)):
        if color[start] != WHITE:
            continue
        # Iterative DFS: the stack holds (pool index, its remaining edges); ``trail`` the
        # names on the current path, so a back edge spells out the cycle.
        stack = [(start, iter(edges(start)))]
        trail = [pools[start].name]
        color[start] = GREY
        while stack:
            i, it = stack[-1]
            step = next(it, None)
            if step is None:
                color[i] = BLACK
                stack.pop()
                trail.pop()
                continue
            target, where = step
            t = index[target]
            if color[t] == GREY:
                cycle = trail[trail.index(target):] + [target]
                parser.err(where, f"pools form a cycle: {' -> '.join(cycle)}")
                found = True
            elif color[t] == WHITE:
                color[t] = GREY
                stack.append((t, iter(edges(t))))
                trail.append(target)
    return found


def _flatten(parser: Any, vip: Vip, i: int, by_name: dict[str, tuple[int, Pool]],
             instance: Instance) -> Vip:
    """The VIP with ``backends`` and ``leaves`` derived from its tree."""
    from maglev.pools import vip_weights

    p = f"vip[{i}]"
    leaves: list[Leaf] = []
    backends: list[Backend] = []
    origin: dict[str, str] = {}  # backend key -> its path in the file
    reached: dict[str, str] = {}  # pool name -> the tree path it was first reached by
    # (pool name, tree path, backup edge on the way) -- depth-first, in file order.
    todo: list[tuple[str, tuple[str, ...], bool]] = [(r.name, (r.name,), False) for r in reversed(vip.pools)]
    while todo:
        name, path, backup = todo.pop()
        shown = " -> ".join(path)
        if name in reached:
            parser.err(p, f"pool {show(name)} is reached twice ({reached[name]}; {shown}): a backend "
                          "may sit in a VIP's tree only once")
            continue
        reached[name] = shown
        k, pool = by_name[name]
        for j, b in enumerate(pool.backends):
            where = f"pool[{k}].backend[{j}]"
            if b.key in origin:
                parser.err(p, f"backend {show(b.key)} is reached twice ({origin[b.key]}; {where})")
                continue
            origin[b.key] = where
            backends.append(b)
            leaves.append(Leaf(b.key, path, b.weight, pool.health, backup))
            _backend_rules(parser, vip, b, f"{where}.address", p, instance)
        parser.tunnel_check(pool.health, f"pool[{k}].health", vip, pool.backends, p)
        if pool.health.type != "none" and not pool.health.port and not vip.port:
            parser.err(f"pool[{k}].health.port", f"is required: {p} serves every port (port = 0)")
        nxt = [(r.name, (*path, r.name), backup) for r in pool.pools]
        if pool.backup:
            nxt.append((pool.backup, (*path, pool.backup), True))
        todo.extend(reversed(nxt))
    vip = dataclasses.replace(vip, backends=tuple(backends), leaves=tuple(leaves))
    pools = {name: pool for name, (_, pool) in by_name.items()}
    weights = vip_weights(vip, pools, lambda _key: True)
    vip = dataclasses.replace(vip, backends=tuple(dataclasses.replace(b, weight=weights[b.key]) for b in backends))
    serving = sum(1 for leaf in leaves if leaf.weight > 0)  # backups may serve: count them all
    if serving > vip.table_size:
        parser.err(f"{p}.table_size", f"{vip.table_size} slots cannot hold the {serving} backends of its pools "
                                      "(use a prime at least 100 times the number of backends)")
    return vip


def _backend_rules(parser: Any, vip: Vip, b: Backend, where: str, p: str, instance: Instance) -> None:
    """The per-VIP rules a flat VIP applies to its backends, for a pool's backend."""
    if not b.address:
        return
    fam = b.ip.version
    if vip.encap in ("gre", "ipip", "vxlan"):
        src = instance.source_ipv4 if fam == 4 else instance.source_ipv6
        if not src:
            parser.err(where, f"IPv{fam} backend needs instance.source_ipv{fam} for {vip.encap} encapsulation "
                              f"(it serves {p})")
    if vip.encap == "l2" and vip.address and fam != _ip_address(vip.address).version:
        parser.err(where, f"encap 'l2' of {p} needs a backend of the VIP's address family")
    if b.address == vip.address or b.address in (instance.source_ipv4, instance.source_ipv6):
        parser.err(where, f"{b.address} is {p}'s address or this instance's source address: packets "
                          "would come back to maglev")


def resolve(parser: Any, raw_pools: Any, vips: tuple[Vip, ...], raw_vips: list[Any],
            instance: Instance) -> tuple[tuple[Pool, ...], tuple[Vip, ...]]:
    """Parse ``[[pool]]``, check the references and cycles, flatten the pooled VIPs."""
    pools = [_pool(parser, raw, f"pool[{k}]") for k, raw in enumerate(parser.array(raw_pools, "pool"))]
    by_name: dict[str, tuple[int, Pool]] = {}
    for k, pool in enumerate(pools):
        if not pool.name:
            continue
        if pool.name in by_name:
            parser.err(f"pool[{k}].name", f"duplicate pool {show(pool.name)} (also pool[{by_name[pool.name][0]}])")
            continue
        by_name[pool.name] = (k, pool)
    n = parser.n_problems

    def known(name: str, where: str) -> None:
        if name and name not in by_name:
            parser.err(where, f"no pool named {show(name)} (pools: {', '.join(sorted(by_name)) or 'none'})")

    for k, pool in enumerate(pools):
        for j, r in enumerate(pool.pools):
            known(r.name, f"pool[{k}].pool[{j}].name")
        known(pool.backup, f"pool[{k}].backup")
    for i, v in enumerate(vips):
        for j, r in enumerate(v.pools):
            known(r.name, f"vip[{i}].pool[{j}].name")
        if isinstance(raw_vips[i], dict) and "pool" in raw_vips[i] and not v.pools:
            parser.err(f"vip[{i}].pool", "lists no pool")
    if parser.n_problems != n or _cycles(parser, pools):
        return tuple(pools), vips  # not flattened: the tree is not sound
    out = tuple(_flatten(parser, v, i, by_name, instance) if v.pools else v for i, v in enumerate(vips))
    return tuple(pools), out
