"""Pure-Python reference of steering's overload shedding (``mg_shed.c``, design in
``maglev/_cffi_src/include/mg_shed.h``): which packets steering drops before enqueue when
a worker's rx ring is above the high-water mark, by VIP priority.

Pinned against C by ``tests/datapath/test_shed_diff.py`` (same marks, same verdict and VIP
for every packet and ring fill).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maglev.datapath.ref_parse import PF_FRAGMENT, parse
from maglev.datapath.tables import MAX_PRIORITY, TablesView, read_tables

NEVER = 0xFFFFFFFF
EXEMPT = -2  # MG_SHED_EXEMPT: never shed
HIGH_WATER_PCT = 50  # MG_SHED_HIGH_WATER_PCT


def marks(ring_size: int, high_water_pct: int, priorities: list[int]) -> list[int]:
    """The rx-ring fill at which a packet of each priority 0..7 is shed (``NEVER``: not at
    all).  Off (all ``NEVER``) unless some VIP has a lower priority than the highest."""
    out = [NEVER] * (MAX_PRIORITY + 1)
    if not priorities or min(priorities) == max(priorities):
        return out
    hw = ring_size * high_water_pct // 100
    hi = max(priorities)
    for p in range(hi):
        out[p] = hw + (ring_size - hw) * p // hi
    return out


@dataclass
class Shed:
    """Steering's view: the tables, the marks and the per-VIP drop counts."""

    view: TablesView | None
    mark: list[int]
    drops: dict[int, int] = field(default_factory=dict)  # VIP index (-1: no VIP) -> packets

    @classmethod
    def load(cls, blob: bytes | None, ring_size: int, high_water_pct: int = HIGH_WATER_PCT) -> Shed:
        if blob is None:
            return cls(None, [NEVER] * (MAX_PRIORITY + 1))
        if ring_size <= 0 or not 0 < high_water_pct <= 100:
            raise ValueError("ring_size > 0 and high_water_pct in 1..100")
        view = read_tables(blob)
        return cls(view, marks(ring_size, high_water_pct, [v.priority for v in view.vips]))

    @property
    def on(self) -> bool:
        return any(m != NEVER for m in self.mark)

    def classify(self, pkt: bytes) -> tuple[int, int]:
        """(VIP index | -1 | EXEMPT, priority) of a frame, as mg_shed_classify."""
        rc, p = parse(pkt)
        if self.view is None or rc != 0 or p.frag & PF_FRAGMENT or p.proto not in (6, 17):
            return EXEMPT, MAX_PRIORITY
        v = self.view.find_vip(p.dst, p.dport, p.proto)
        if v < 0:  # a peer cluster's address: the local VIP with the same suffix
            peer, local = self.view.cluster_map(p.dst, p.family)
            if peer:
                v = self.view.find_vip(local, p.dport, p.proto)
        return v, (self.view.vips[v].priority if v >= 0 else 0)

    def decide(self, prio: int, used: int) -> bool:
        return self.on and prio <= MAX_PRIORITY and used >= self.mark[prio]

    def packet(self, pkt: bytes, used: int) -> tuple[bool, int]:
        """mg_shed_packet(): (shed?, VIP index | -1 | EXEMPT); counts nothing."""
        v, prio = self.classify(pkt)
        return v != EXEMPT and self.decide(prio, used), v

    def dispatch(self, pkts: list[bytes], workers: list[int], room: list[int], ring_size: int) -> list[int]:
        """One burst as mg_steer_dispatch places it when no ring overflows: each packet's
        worker (given) or -1 when shed; ``room`` is each ring's free room, decremented as
        packets are placed, and the drops are counted."""
        out = []
        for pkt, w in zip(pkts, workers, strict=True):
            v, prio = self.classify(pkt)
            if v != EXEMPT and self.decide(prio, ring_size - room[w]):
                self.drops[v] = self.drops.get(v, 0) + 1
                out.append(-1)
                continue
            room[w] -= 1
            out.append(w)
        return out
