"""Nested backend pools: effective weights over the tree, with health and backup pools.

A pooled VIP (``[[vip.pool]]``, docs/config.md "Pools") points at pools; a pool holds
backends and other pools, each member with a weight, and may name a *backup* pool.  The
Maglev table is built over the leaf backends only, each with its **effective weight**:
the share of the VIP's traffic it should get, turned into integers.

How a pool shares out the traffic it receives (its *mass*):

* its **healthy share** ``h`` is the weighted share of its members that are up (a member
  pool counts with its own healthy share; backup pools are not counted);
* while ``h`` is below ``backup_below_percent`` and the backup pool can serve, the backup
  gets ``1 - h`` of the mass and the pool's own members ``h`` (spill-over: what the pool
  lost goes to the backup; with every member down the backup gets all of it);
* the members' part is split among the members that can serve (a backend that is up, a
  pool with something to serve) in proportion to their configured weights: a dead
  member's share goes to its live siblings, not to other pools.

The config validator computes the static view (every backend up, so no backup serves) for
``Vip.backends``; the config manager recomputes it from the health verdicts before every
tables build (:func:`effective_config`).  Backends of an idle backup pool get weight 0:
like a drained backend they get no new flows and keep their established ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol, TypeVar

from maglev.config_model import HealthCheck, Pool, PoolRef, Vip
from maglev.hashing import MAX_WEIGHT

Up = Callable[[str], bool]  # backend key -> healthy?


class PooledConfig(Protocol):
    """What this module reads of a ``maglev.config.Config`` (a Protocol, so the parser's
    module, which calls this one through maglev/config_pools.py, is not imported back)."""

    @property
    def vips(self) -> tuple[Vip, ...]: ...

    @property
    def pools(self) -> tuple[Pool, ...]: ...


C = TypeVar("C", bound=PooledConfig)


class _Tree:
    """One VIP's tree evaluated under one health view (memoised per pool)."""

    def __init__(self, pools: dict[str, Pool], up: Up):
        self.pools = pools
        self.up = up
        self._health: dict[str, Fraction] = {}
        self._serving: dict[str, bool] = {}

    def health(self, name: str) -> Fraction:
        """Weighted share of the pool's own members that are up (backup not counted)."""
        h = self._health.get(name)
        if h is None:
            p = self.pools[name]
            total = sum(b.weight for b in p.backends) + sum(r.weight for r in p.pools)
            good = Fraction(sum(b.weight for b in p.backends if self.up(b.key)))
            good += sum((r.weight * self.health(r.name) for r in p.pools), Fraction(0))
            h = self._health[name] = good / total if total else Fraction(0)
        return h

    def serving(self, name: str) -> bool:
        """Can the pool take traffic at all (a live weighted backend somewhere, backup included)?"""
        s = self._serving.get(name)
        if s is None:
            p = self.pools[name]
            s = (any(b.weight > 0 and self.up(b.key) for b in p.backends)
                 or any(r.weight > 0 and self.serving(r.name) for r in p.pools)
                 or bool(p.backup and self.serving(p.backup)))
            self._serving[name] = s
        return s

    def backup_active(self, name: str) -> bool:
        p = self.pools[name]
        return bool(p.backup) and self.health(name) * 100 < p.backup_below_percent and self.serving(p.backup)

    def split(self, refs: tuple[PoolRef, ...], backends: tuple, mass: Fraction, out: dict[str, Fraction]) -> None:
        live_b = [b for b in backends if b.weight > 0 and self.up(b.key)]
        live_p = [r for r in refs if r.weight > 0 and self.serving(r.name)]
        total = sum(b.weight for b in live_b) + sum(r.weight for r in live_p)
        if not total or not mass:
            return
        for b in live_b:
            out[b.key] = out.get(b.key, Fraction(0)) + mass * b.weight / total
        for r in live_p:
            self.distribute(r.name, mass * r.weight / total, out)

    def distribute(self, name: str, mass: Fraction, out: dict[str, Fraction]) -> None:
        p = self.pools[name]
        if self.backup_active(name):
            own = mass * self.health(name)
            self.split(p.pools, p.backends, own, out)
            self.distribute(p.backup, mass - own, out)
        else:
            self.split(p.pools, p.backends, mass, out)


def shares(refs: tuple[PoolRef, ...], pools: dict[str, Pool], up: Up) -> dict[str, Fraction]:
    """Backend key -> share of the VIP's traffic (summing to 1, or empty when nothing serves)."""
    out: dict[str, Fraction] = {}
    _Tree(pools, up).split(refs, (), Fraction(1), out)
    return out


def integer_weights(share: dict[str, Fraction]) -> dict[str, int]:
    """Shares as Maglev weights 0..MAX_WEIGHT: exact small integers when they fit (1/4, 1/4,
    1/2 -> 1, 1, 2), else scaled so the largest is MAX_WEIGHT (a live backend keeps >= 1)."""
    pos = {k: s for k, s in share.items() if s > 0}
    if not pos:
        return {k: 0 for k in share}
    lcm = math.lcm(*(s.denominator for s in pos.values()))
    ints = {k: int(s * lcm) for k, s in pos.items()}
    g = math.gcd(*ints.values())
    ints = {k: v // g for k, v in ints.items()}
    top = max(ints.values())
    if top > MAX_WEIGHT:
        big = max(pos.values())
        ints = {k: max(1, round(s / big * MAX_WEIGHT)) for k, s in pos.items()}
    return {k: ints.get(k, 0) for k in share}


def vip_weights(vip: Vip, pools: dict[str, Pool], up: Up) -> dict[str, int]:
    """Every leaf of a pooled VIP -> its effective integer weight under ``up``."""
    share = shares(vip.pools, pools, up)
    return integer_weights({leaf.backend: share.get(leaf.backend, Fraction(0)) for leaf in vip.leaves})


def effective_config(config: C, down: frozenset[tuple[str, str]]) -> C:
    """``config`` with every pooled VIP's backend weights recomputed for the health view
    ``down`` (the set of dead (VIP key, backend key) pairs, which stays as it is)."""
    if not config.pools:
        return config
    by_name = {p.name: p for p in config.pools}
    vips = []
    changed = False
    for v in config.vips:
        if not v.pools:
            vips.append(v)
            continue
        key = v.key
        w = vip_weights(v, by_name, lambda b, key=key: (key, b) not in down)
        if all(w[b.key] == b.weight for b in v.backends):
            vips.append(v)
            continue
        changed = True
        vips.append(dataclasses.replace(v, backends=tuple(dataclasses.replace(b, weight=w[b.key]) for b in v.backends)))
    return dataclasses.replace(config, vips=tuple(vips)) if changed else config


def pool_path(vip: Vip, backend_key: str) -> str:
    """``web/eu`` for a pooled VIP's backend, '' for a flat VIP's (or an unknown key)."""
    for leaf in vip.leaves:
        if leaf.backend == backend_key:
            return "/".join(leaf.path)
    return ""


def pool_paths(config: PooledConfig) -> dict[tuple[str, str], str]:
    """(VIP key, canonical backend address) -> pool path, for every pooled VIP's backend
    (``whereis`` and the metrics name it)."""
    out = {}
    for v in config.vips:
        if v.pools:
            paths = {leaf.backend: "/".join(leaf.path) for leaf in v.leaves}
            for b in v.backends:
                out[(v.key, str(b.ip))] = paths.get(b.key, "")
    return out


def backend_checks(vip: Vip) -> list[tuple[int, HealthCheck]]:
    """(index in ``vip.backends``, its HealthCheck) for every backend of the VIP: the VIP's
    own check for a flat VIP, the backend's pool's check for a pooled one."""
    if not vip.pools:
        return [(j, vip.health) for j in range(len(vip.backends))]
    checks = {leaf.backend: leaf.health for leaf in vip.leaves}
    return [(j, checks.get(b.key, vip.health)) for j, b in enumerate(vip.backends)]
