"""Steering's flow -> worker map: which worker gets a flow, weighted by the CPU each has.

Steering hashes every packet's flow key (SipHash-1-3, the deployment's secret, 3-tuple for
fragments) and picks a worker from the 64-bit hash.  Two maps:

* **plain**: worker = ``(hash >> 32) % n_workers`` -- every worker gets the same share.
  Used whenever the workers get equal CPU (one worker, all workers alone on their cores,
  or all sharing alike).
* **weighted**: worker = ``reta[hash >> 56]``, a 256-slot indirection table like a NIC's
  RSS RETA.  With the ``spread`` placement on 2 CPUs (``plan_cpus``: steering, the muxer
  and worker 1 on CPU 0, worker 0 alone on CPU 1) equal shares saturate CPU 0 while CPU 1
  idles; the table gives a worker that shares its CPU with steering and the muxer a smaller
  share of the flows, so both cores carry about the same load (``worker_weights``).  The
  default placement (``apart``) runs no worker on steering's CPU, so its map is plain.

The map is fixed for a run (steering builds it from its parameters, so a restarted
steering uses the same one) and is part of what a connection table records
(``map_fp``, maglev/rings/conntrack_shm.py): a later run adopts a worker's table only when
the same flows land on that worker.  The C side is ``mg_steer_set_reta`` / the dispatch in
``mg_steer_dispatch``; ``DispatchMap.worker_of`` is its Python reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

RETA_SIZE = 256  # MG_STEER_RETA: the top 8 bits of the flow hash pick a slot
# CPU that steering + the muxer spend per packet, relative to what a worker spends on a
# packet it handles.  Measured 2026-12-07 with the generator NIC (W=2, quiet machine):
# steering ~105 ns incl. the generator + muxer ~25 vs. a worker's ~185 ns per packet it
# handles -> 0.7.  0 = equal shares.
STEER_COST = 0.7
# What `maglev run` uses: weights OFF (the plain map) for now (docs/actors.md, measured
# 2026-12-07 on the loaded 2-vCPU machine): the big worker's ring fills whenever its CPU is
# taken, so fallback stays at 13-24% even with the 1 ms stuck rule (MG_STEER_STUCK_NS)
# against 7-12% with equal shares; and the per-worker limits (conntrack capacity, the
# protected segment, the new-flow rate guard) are sized for equal shares, so the big worker
# meets them first (tests/actors/test_flood_run.py failed with weights on).
DEFAULT_STEER_COST = 0.0


@dataclass(frozen=True)
class DispatchMap:
    n_workers: int
    reta: bytes | None  # None: plain (hash >> 32) % n_workers
    weights: tuple[float, ...]

    @property
    def fp(self) -> int:
        """32-bit fingerprint of the map, 0 for the plain map (what tables made before
        weighted maps existed record)."""
        if self.reta is None:
            return 0
        d = hashlib.blake2b(self.n_workers.to_bytes(2, "little") + self.reta, digest_size=4).digest()
        return int.from_bytes(d, "little") or 1

    def worker_of(self, flow_hash: int) -> int:
        """The worker steering hands a packet with this 64-bit flow hash to."""
        if self.reta is None:
            return ((flow_hash >> 32) & 0xFFFFFFFF) % self.n_workers
        return self.reta[(flow_hash >> 56) & 0xFF]

    def shares(self) -> list[float]:
        """The share of flows each worker gets (slots / RETA_SIZE for a weighted map)."""
        if self.reta is None:
            return [1.0 / self.n_workers] * self.n_workers
        return [self.reta.count(i) / RETA_SIZE for i in range(self.n_workers)]


def worker_weights(plan: dict[str, list[int]], n_workers: int, steer_cost: float = STEER_COST) -> list[float]:
    """Each worker's share of the flows so that every CPU that runs a worker carries the
    same load: steering + muxer cost ``steer_cost`` (in units of a worker's cost per packet
    it handles) on steering's CPU; the workers' total of 1 is water-filled over the CPUs
    that run workers, and a CPU's share is split equally among its workers.  A worker
    planned on several CPUs makes the map plain (equal shares)."""
    equal = [1.0 / n_workers] * n_workers
    cpu_of = []
    for i in range(n_workers):
        c = plan.get(f"worker-{i}", [])
        if len(c) != 1:
            return equal
        cpu_of.append(c[0])
    fixed: dict[int, float] = {c: 0.0 for c in cpu_of}
    st = plan.get("steering", [])
    if steer_cost > 0 and len(st) == 1 and st[0] in fixed:
        fixed[st[0]] += steer_cost
    # water level L: sum over CPUs of max(0, L - fixed) == 1
    levels = sorted(fixed.values())
    level = 0.0
    for k in range(len(levels), 0, -1):
        low = levels[:k]
        cand = (1.0 + sum(low)) / k
        if cand >= low[-1]:
            level = cand
            break
    per_cpu = {c: max(0.0, level - f) for c, f in fixed.items()}
    count = {c: cpu_of.count(c) for c in fixed}
    return [per_cpu[c] / count[c] for c in cpu_of]


def build_reta(weights: list[float]) -> bytes:
    """A RETA_SIZE-slot table giving worker i about weights[i] of the slots (largest
    remainder, at least one slot each), each worker's slots together in index order."""
    n = len(weights)
    if not 1 <= n <= RETA_SIZE:
        raise ValueError(f"{n} workers: a weighted map takes 1..{RETA_SIZE}")
    total = sum(weights)
    spare = RETA_SIZE - n  # one slot each first
    exact = [w / total * spare for w in weights]
    slots = [1 + int(e) for e in exact]
    order = sorted(range(n), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in order[:RETA_SIZE - sum(slots)]:
        slots[i] += 1
    return b"".join(bytes([i]) * s for i, s in enumerate(slots))


def dispatch_map(n_workers: int, plan: dict[str, list[int]], steer_cost: float = STEER_COST) -> DispatchMap:
    """The map a run with this placement uses: plain when the weights come out equal."""
    w = worker_weights(plan, n_workers, steer_cost)
    if n_workers == 1 or n_workers > RETA_SIZE or max(w) - min(w) < 1e-9:
        return DispatchMap(n_workers, None, tuple(w))
    reta = build_reta(w)
    if len(set(reta.count(i) for i in range(n_workers))) == 1:
        return DispatchMap(n_workers, None, tuple(w))  # equal after rounding: plain
    return DispatchMap(n_workers, reta, tuple(w))


def default_map(n_workers: int, cpus_text: str = "", steer_cost: float = DEFAULT_STEER_COST) -> DispatchMap:
    """The map ``maglev run --workers n_workers [--cpus cpus_text]`` uses on this machine."""
    from maglev.actors.placement import parse_cpus, plan_cpus

    return dispatch_map(n_workers, plan_cpus(n_workers, parse_cpus(cpus_text)), steer_cost)
