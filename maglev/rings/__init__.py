"""Shared memory for one forwarder instance: frame pool, SPSC rings, doorbells, table
publication, stats, heartbeats and frame accounting.  Public surface; see docs/rings.md.

``Region.create(name, n_workers)`` makes ``/dev/shm/maglev-<name>``; every actor process
``Region.attach(name)``-es it.  The C side of the same API is declared in
``maglev/_cffi_src/include/mg_shm.h`` (layout, stats, heartbeats), ``mg_ring.h`` (rings),
``mg_doorbell.h``, ``mg_hand.h`` (frames in an actor's hands) and ``mg_tables_pub.h``, so
C burst kernels call the same functions in one C call per burst.
"""

from __future__ import annotations

from maglev.rings.conntrack_shm import keep_for_adoption
from maglev.rings.region import (
    ALERT_STOP,
    BELL_MUXER,
    BELL_STEERING,
    HAND_KEEP,
    HAND_MAX,
    RING_FREE,
    RING_RET,
    RING_RX,
    RING_SENT,
    RING_SPARE,
    RING_TX,
    SLOT_BGP,
    SLOT_CONFIG,
    SLOT_HEALTH,
    SLOT_MUXER,
    SLOT_STEERING,
    SLOT_SUPERVISOR,
    SLOT_WORKER0,
    AccountReport,
    Doorbell,
    Hand,
    Region,
    RegionError,
    Ring,
    Tables,
    TablesBusyError,
    remove_stale_regions,
    worker_bell,
    worker_slot,
)
from maglev.rings.stats import (
    SS_NIC_DROPS,
    STATS_WORDS,
    StatsBlock,
    forwarder_counters,
    worker_counters,
)

__all__ = [
    "ALERT_STOP",
    "BELL_MUXER",
    "BELL_STEERING",
    "HAND_KEEP",
    "HAND_MAX",
    "RING_FREE",
    "RING_RET",
    "RING_RX",
    "RING_SENT",
    "RING_SPARE",
    "RING_TX",
    "SLOT_BGP",
    "SLOT_CONFIG",
    "SLOT_HEALTH",
    "SLOT_MUXER",
    "SLOT_STEERING",
    "SLOT_SUPERVISOR",
    "SLOT_WORKER0",
    "STATS_WORDS",
    "AccountReport",
    "Doorbell",
    "Hand",
    "Region",
    "RegionError",
    "Ring",
    "Tables",
    "TablesBusyError",
    "SS_NIC_DROPS",
    "StatsBlock",
    "forwarder_counters",
    "keep_for_adoption",
    "remove_stale_regions",
    "worker_bell",
    "worker_counters",
    "worker_slot",
]
