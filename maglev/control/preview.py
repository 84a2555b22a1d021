"""Change preview: what a new config would move, before anything is committed.

:func:`diff_tables` compares two tables blobs (the one published now, or built from the old
config, and the one the new config would publish) VIP by VIP, VIPs matched by key
(``ADDR:PORT/PROTO``) and backends by their 64-bit identity (the same (VIP, backend) pair
has the same id in every build, mg_tables.h):

* ``entries_moved_share``: the share of the VIP's Maglev table entries whose backend
  differs (an empty entry counts as "no backend").  Exact when the table size is unchanged;
  when it changes, the share of :data:`SAMPLES` fixed pseudo-random flow hashes whose
  entry (``hash % M``) names another backend.  This is the share of *new* flows that would
  go elsewhere.
* ``flows_moved_share``: the share of *established* flows that would change backend.  An
  established flow keeps its backend through the connection table (paper section 3.3)
  unless that backend is gone from the VIP or not present-and-healthy (``ct_backend`` in
  mg_dp.c, counted as ``reselected``), so it is the share of the flows on such backends.
  **Counted** when the caller passes ``flows`` (backend id -> live entries over every
  worker's connection table: the config manager reads the /dev/shm tables read-only with
  ``mg_ct_census``, maglev/rings/conntrack_shm.py ``census_instance``):
  ``flows_basis = "conntrack"``, ``flows_estimated = false``, with
  ``flows_live_entries`` / ``flows_moved_entries``.  The tables change while they are
  read: a moment during the scan, not a snapshot.  Otherwise (tables worker-private,
  ``[conntrack] shared = false``, or unreadable; ``maglev table --diff`` offline)
  **estimated**: by the workers' per-backend packet counts when the caller has them
  (``flows_basis = "backend_packets"``: traffic-weighted, since the start of the run), else
  by the backends' shares of the old table (``"table_entries"``: how new flows have been
  spread).  Two cases are not conntrack-protected and stay estimates on any basis: a VIP
  with ``conntrack = false`` (every packet is hashed: flows move like entries) and a VIP
  whose hashing options change (old entries no longer match the new key: a flow keeps its
  backend only by chance, probability sum over backends of old share x new share).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from maglev.datapath.tables import (
    VIP_F_HASH_DST_PORT,
    VIP_F_HASH_SRC_IP,
    VIP_F_NO_CONNTRACK,
    VIP_F_UDP_NO_SPORT,
    TablesView,
    read_tables,
    vip_key,
)

__all__ = ["SAMPLES", "backend_ids", "diff_tables"]

SAMPLES = 1 << 17
_KEY_FLAGS = VIP_F_HASH_SRC_IP | VIP_F_HASH_DST_PORT | VIP_F_UDP_NO_SPORT
_M64 = (1 << 64) - 1


def _sample_hashes() -> list[int]:
    """SplitMix64 from a fixed seed: the same samples in every run."""
    out, x = [], 0x6D61676C65762D70
    for _ in range(SAMPLES):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return out


_samples: list[int] = []


def _ids(view: TablesView, vi: int) -> list[int | None]:
    """The backend id in each Maglev entry of VIP ``vi`` (None = empty)."""
    bes = view.backends
    return [bes[e].id if e >= 0 else None for e in view.maglev(vi)]


def backend_ids(*blobs: bytes) -> list[int]:
    """Every backend id of the tables blobs (what a census of the connection tables counts
    for :func:`diff_tables`), ascending."""
    return sorted({be.id for blob in blobs for be in read_tables(blob).backends})


def _round(x: float) -> float:
    return round(x, 6)


def diff_tables(old_blob: bytes, new_blob: bytes,
                packets: dict[tuple[str, str], int] | None = None,
                flows: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Per VIP of either blob: status (added, removed, changed, unchanged), table sizes,
    ``entries_moved_share``, ``flows_moved_share``, ``flows_basis`` and ``flows_estimated``
    (see the module docstring).  ``flows``: backend id -> live connection-table entries
    naming it, summed over the workers' tables (:func:`backend_ids` lists the ids to count;
    ``maglev.rings.conntrack_shm.census_instance`` counts them): the exact basis.  Without
    it, ``packets``: (vip key, backend address) -> packets forwarded, from the workers'
    counters; without that (or with no packets on a VIP) the old table's entries."""
    global _samples
    old, new = read_tables(old_blob), read_tables(new_blob)
    old_vips = {vip_key(v): i for i, v in enumerate(old.vips)}
    new_vips = {vip_key(v): i for i, v in enumerate(new.vips)}
    rows: list[dict[str, Any]] = []
    for key in [*old_vips, *(k for k in new_vips if k not in old_vips)]:
        oi, ni = old_vips.get(key), new_vips.get(key)
        if ni is None:
            rows.append({"vip": key, "status": "removed", "table_size_old": old.vips[oi].table_size,
                         "entries_moved_share": 1.0, "flows_moved_share": 1.0, "flows_basis": "vip_removed"})
            continue
        if oi is None:
            rows.append({"vip": key, "status": "added", "table_size_new": new.vips[ni].table_size,
                         "entries_moved_share": None, "flows_moved_share": None, "flows_basis": "vip_added"})
            continue
        ov, nv = old.vips[oi], new.vips[ni]
        a, b = _ids(old, oi), _ids(new, ni)
        if ov.table_size == nv.table_size:
            moved = sum(x != y for x, y in zip(a, b, strict=True)) / ov.table_size
            entries_basis = "exact"
        else:
            if not _samples:
                _samples = _sample_hashes()
            moved = sum(a[h % ov.table_size] != b[h % nv.table_size] for h in _samples) / SAMPLES
            entries_basis = f"{SAMPLES} sampled flow hashes (table size changed)"
        new_ids = {new.backends[j].id for j in range(nv.backend_first, nv.backend_first + nv.backend_count)}
        new_ok = {new.backends[j].id for j in range(nv.backend_first, nv.backend_first + nv.backend_count)
                  if new.backends[j].healthy}
        exact: dict[str, Any] = {}
        old_share: Counter[int] = Counter()
        if flows is not None:
            # Entries naming a backend of this VIP (now, or in the new config: an entry may
            # still name a backend an earlier change removed, which would come back).
            ids = {old.backends[j].id for j in range(ov.backend_first, ov.backend_first + ov.backend_count)}
            old_share.update({i: flows[i] for i in ids | new_ids if flows.get(i)})
            live = sum(old_share.values())
            gone = sum(n for i, n in old_share.items() if i not in new_ok)
            exact = {"flows_live_entries": live, "flows_moved_entries": gone}
            basis = "conntrack"
        else:
            # Flows per old backend: packets when counted, else the old table's entries.
            basis = "table_entries"
            if packets:
                for j in range(ov.backend_first, ov.backend_first + ov.backend_count):
                    be = old.backends[j]
                    n = packets.get((key, be.address), 0)
                    if n:
                        old_share[be.id] += n
                if old_share:
                    basis = "backend_packets"
            if not old_share:
                old_share.update(x for x in a if x is not None)
        total = sum(old_share.values())
        estimated = True
        if nv.flags & VIP_F_NO_CONNTRACK:
            flows_share = moved
            basis = "no_conntrack: flows move with their entries"
            exact = {}
        elif (ov.flags & _KEY_FLAGS) != (nv.flags & _KEY_FLAGS) or ov.flags & VIP_F_NO_CONNTRACK:
            new_entries = Counter(x for x in b if x is not None)
            n_new = sum(new_entries.values()) or 1
            same = sum(old_share[i] / total * new_entries[i] / n_new for i in old_share) if total else 0.0
            flows_share = 1.0 - same if total else 0.0
            basis += "; hashing options changed: every flow is re-selected"
            exact = {}
        else:
            flows_share = sum(n for i, n in old_share.items() if i not in new_ok) / total if total else 0.0
            estimated = flows is None
        changed = a != b or ov.flags != nv.flags or ov.priority != nv.priority or ov.encap != nv.encap
        rows.append({"vip": key, "status": "changed" if changed else "unchanged",
                     "table_size_old": ov.table_size, "table_size_new": nv.table_size,
                     "entries_moved_share": _round(moved), "entries_basis": entries_basis,
                     "flows_moved_share": _round(flows_share), "flows_basis": basis,
                     "flows_estimated": estimated, **exact})
    return rows
