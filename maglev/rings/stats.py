"""The actors' stats blocks, read and written only through C (``mg_stats.h``).

Every actor slot of the region has one block of ``STATS_WORDS`` u64 words with one writer
(the actor; the C kernels of steering, the workers and the muxer write most words).  The
meaning of each word is named once, in C (``MG_SS_*`` steering, ``MG_MS_*`` muxer,
``MG_WS_*`` workers, ``MG_TW_*`` the packet tracer's block); Python names words by those
constants and never computes an address: :class:`StatsBlock` hands the slot and the word
to ``mg_stats_load`` / ``mg_stats_store`` (one atomic access each, acquire/release), and
``snapshot()`` copies the block word by word (``mg_stats_snapshot``).

The decoders below turn blocks into the dicts ``maglev run --json``, ``maglev ctl stats``
and Prometheus all show, so the three always agree.
"""

from __future__ import annotations

from typing import Any, Protocol

from maglev.datapath.engine import DROP_NAMES
from maglev.native import ffi, lib

STATS_WORDS = int(lib.MG_STATS_WORDS)

# Steering words for records a capture NIC could not turn into frames: they count as
# received and dropped with these reasons (the Python NIC counts them; steering copies
# the counts here in its tick).
SS_NIC_DROPS: dict[str, int] = {
    "unsupported_linktype": int(lib.MG_SS_NIC_UNSUPPORTED_LINKTYPE),
    "frame_overflow": int(lib.MG_SS_NIC_FRAME_OVERFLOW),
}

# The NICs' own counters, copied into the steering / muxer blocks by the actor's tick
# (NicCounters): a restarted actor goes on from its predecessor's values.  None of them is
# a packet of the accounting identity: a link-down report is an event, a kernel drop was
# never received, and a refused transmit is already counted as tx_errors.
SS_NIC_COUNTERS: dict[str, int] = {
    "rx_link_down": int(lib.MG_SS_NIC_RX_LINK_DOWN),
    "kernel_drops": int(lib.MG_SS_NIC_KERNEL_DROPS),
    "reopens": int(lib.MG_SS_NIC_REOPENS),
}
MS_NIC_COUNTERS: dict[str, int] = {"tx_link_down": int(lib.MG_MS_NIC_TX_LINK_DOWN)}


class NicCounters:
    """Copies a NIC's counters (``nic.stats()`` keys named in ``words``) into an actor's
    stats block, on top of what the block held when the actor started (its killed
    predecessor's last copy), at most every ``period_s`` unless forced."""

    def __init__(self, block: StatsBlock, words: dict[str, int], period_s: float = 0.25):
        self.block, self.words, self.period_s = block, words, period_s
        self.base = {name: block[w] for name, w in words.items()}
        self._next = 0.0

    def sync(self, nic: Any, now: float, force: bool = False) -> None:
        if nic is None or (not force and now < self._next):
            return
        self._next = now + self.period_s
        stats = getattr(nic, "stats", None)
        got = stats() if stats is not None else {}
        for name, w in self.words.items():
            v = got.get(name)
            if isinstance(v, int) and not isinstance(v, bool):
                self.block[w] = self.base[name] + v


class _Region(Protocol):
    n_workers: int

    @property
    def base(self) -> Any: ...

    def stats(self, slot: int) -> StatsBlock: ...


class StatsBlock:
    """One actor's stats block.  ``block[word]`` reads a word, ``block[word] = v`` writes it
    (the slot's one writer only); ``snapshot()`` is a private copy of all words."""

    __slots__ = ("_region", "slot")

    def __init__(self, region: Any, slot: int):
        self._region = region
        self.slot = slot

    def _word(self, word: int) -> int:
        if type(word) is not int or not 0 <= word < STATS_WORDS:
            raise IndexError(f"stats word {word!r}: a block has {STATS_WORDS} words")
        return word

    def __getitem__(self, word: int) -> int:
        return int(lib.mg_stats_load(self._region._b(), self.slot, self._word(word)))

    def __setitem__(self, word: int, value: int) -> None:
        lib.mg_stats_store(self._region._b(), self.slot, self._word(word), value)

    def __len__(self) -> int:
        return STATS_WORDS

    def snapshot(self) -> list[int]:
        out = ffi.new("uint64_t[]", STATS_WORDS)
        lib.mg_stats_snapshot(self._region._b(), self.slot, out)
        return list(out)


def worker_counters(words: Any) -> dict[str, Any]:
    """A worker's stats block (a :class:`StatsBlock` or its snapshot) as a dict: drops by
    reason name, zeros left out."""
    drops = {}
    for i, name in enumerate(DROP_NAMES):
        v = int(words[lib.MG_WS_DROPS + i])
        if v and i:
            drops[name] = v
    if int(words[lib.MG_WS_RESTART_DROPS]):
        drops["worker_restart"] = int(words[lib.MG_WS_RESTART_DROPS])
    return {
        "packets_in": int(words[lib.MG_WS_PACKETS_IN]),
        "bytes_in": int(words[lib.MG_WS_BYTES_IN]),
        "forwarded": int(words[lib.MG_WS_FORWARDED]),
        "redirected": int(words[lib.MG_WS_REDIRECTED]),
        "bytes_out": int(words[lib.MG_WS_BYTES_OUT]),
        "icmp_sent": int(words[lib.MG_WS_ICMP_SENT]),
        "icmp_forwarded": int(words[lib.MG_WS_ICMP_FORWARDED]),
        "fragments": int(words[lib.MG_WS_FRAGMENTS]),
        "held": int(words[lib.MG_WS_HELD]),
        "table_swaps": int(words[lib.MG_WS_TABLE_SWAPS]),
        "tables_generation": int(words[lib.MG_WS_GENERATION]),
        "bursts": int(words[lib.MG_WS_BURSTS]),
        "spares": int(words[lib.MG_WS_SPARES]),
        "cluster_in": int(words[lib.MG_WS_CLUSTER_IN]),
        "cluster_matched": int(words[lib.MG_WS_CLUSTER_MATCHED]),
        "backup_out": int(words[lib.MG_WS_BACKUP_OUT]),
        "spares_used": int(words[lib.MG_WS_SPARES_USED]),
        "spare_waits": int(words[lib.MG_WS_SPARE_WAITS]),
        "quic_cid_routed": int(words[lib.MG_WS_QUIC_CID_ROUTED]),
        "quic_hashed": int(words[lib.MG_WS_QUIC_HASHED]),
        "dropped": drops,
    }


def steering_counters(words: Any) -> dict[str, int]:
    """Steering's block (a snapshot) by name; ``packets_in`` counts the NIC's drops too."""
    nic = {reason: int(words[w]) for reason, w in SS_NIC_DROPS.items()}
    return {
        "rx_packets": int(words[lib.MG_SS_RX_PACKETS]), "rx_bytes": int(words[lib.MG_SS_RX_BYTES]),
        "dispatched": int(words[lib.MG_SS_DISPATCHED]), "fallback": int(words[lib.MG_SS_FALLBACK]),
        "backpressure": int(words[lib.MG_SS_BACKPRESSURE]), "unparsed": int(words[lib.MG_SS_UNPARSED]),
        "fragments": int(words[lib.MG_SS_FRAGMENTS]), "no_free": int(words[lib.MG_SS_NO_FREE]),
        "recovered": int(words[lib.MG_SS_RECOVERED]), "bursts": int(words[lib.MG_SS_BURSTS]),
        "reclaimed": int(words[lib.MG_SS_RECLAIMED]), "lost": int(words[lib.MG_SS_LOST]),
        "first_rx_ns": int(words[lib.MG_SS_FIRST_RX_NS]), "last_rx_ns": int(words[lib.MG_SS_LAST_RX_NS]),
        "spare_reserve": int(words[lib.MG_SS_SPARE_RESERVE]), "spares_sent": int(words[lib.MG_SS_SPARES_SENT]),
        "spare_short": int(words[lib.MG_SS_SPARE_SHORT]), "shed": int(words[lib.MG_SS_SHED]),
        "owner_stalled": int(words[lib.MG_SS_OWNER_STALLED]),
        "packets_in": int(words[lib.MG_SS_RX_PACKETS]) + sum(nic.values()),
        **{f"nic_{k}": v for k, v in nic.items()},
        **{f"nic_{k}": int(words[w]) for k, w in SS_NIC_COUNTERS.items()},
    }


def muxer_counters(words: Any) -> dict[str, int]:
    return {"tx_packets": int(words[lib.MG_MS_TX_PACKETS]), "tx_errors": int(words[lib.MG_MS_TX_ERRORS]),
            "tx_errors_fwd": int(words[lib.MG_MS_TX_ERRORS_FWD]), "lost_fwd": int(words[lib.MG_MS_LOST_FWD]),
            "recovered": int(words[lib.MG_MS_RECOVERED]), "bursts": int(words[lib.MG_MS_BURSTS]),
            **{f"nic_{k}": int(words[w]) for k, w in MS_NIC_COUNTERS.items()}}


def edge_drops(st: dict[str, int], mx: dict[str, int]) -> tuple[dict[str, int], int]:
    """Drops counted outside the workers' data path (decoded steering and muxer blocks),
    and how many of them the workers had counted as forwarded.

    ``steering_restart``: packets a dead steering held (received, never placed).
    ``priority_shed``: packets steering dropped before enqueue under overload because their
    VIP's priority was too low for their worker's rx ring fill (``mg_shed.h``).
    ``owner_stalled``: packets steering dropped before enqueue because their worker's rx
    ring was full and that worker had not consumed from it for the stall time (dead or
    frozen; moving them would hand their flows to a worker without their entries).
    ``tx_error`` / ``muxer_restart``: forwarded packets that did not leave after all (the
    NIC refused them; a dead muxer held them before counting them as sent).  Those move
    from forwarded to dropped -- subtract the second value from the workers' forwarded --
    so ``packets_in == forwarded + sum(dropped)`` stays exact (a refused ICMP error is not
    a lost input packet: that packet is already a ``too_big`` drop).  The NIC's own drops
    (``SS_NIC_DROPS``) are not included."""
    out = {}
    for reason, v in (("steering_restart", st["lost"]), ("priority_shed", st["shed"]),
                      ("owner_stalled", st["owner_stalled"]),
                      ("tx_error", mx["tx_errors_fwd"]),
                      ("muxer_restart", mx["lost_fwd"])):
        if v:
            out[reason] = v
    return out, out.get("tx_error", 0) + out.get("muxer_restart", 0)


def forwarder_counters(region: _Region) -> dict[str, Any]:
    """Every data-plane counter of a running (or stopped) forwarder, one snapshot per
    block: steering, muxer, each worker, and the drops by reason over all of them (the
    NIC's and the muxer's included).  What ``run --json``, ``ctl stats`` and Prometheus
    are all built from."""
    st = steering_counters(region.stats(int(lib.MG_SLOT_STEERING)).snapshot())
    mx = muxer_counters(region.stats(int(lib.MG_SLOT_MUXER)).snapshot())
    w0 = int(lib.MG_SLOT_WORKER0)
    workers = [worker_counters(region.stats(w0 + i).snapshot()) for i in range(region.n_workers)]
    dropped: dict[str, int] = {}
    for w in workers:
        for k, v in w["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    for reason in SS_NIC_DROPS:
        if st[f"nic_{reason}"]:
            dropped[reason] = dropped.get(reason, 0) + st[f"nic_{reason}"]
    extra, not_sent = edge_drops(st, mx)
    for k, v in extra.items():
        dropped[k] = dropped.get(k, 0) + v
    # Fragments sent on to the pool instance that owns them (paper 4.3) left as forwarded
    # too (to a peer instead of a backend); forwarded packets the NIC refused or a dead
    # muxer held are drops instead: packets_in == forwarded + sum(dropped), exactly.
    forwarded = sum(w["forwarded"] + w["redirected"] for w in workers) - not_sent
    nic = {k: st[f"nic_{k}"] for k in SS_NIC_COUNTERS} | {k: mx[f"nic_{k}"] for k in MS_NIC_COUNTERS}
    return {"steering": st, "muxer": mx, "workers": workers, "forwarded": forwarded,
            "dropped": dict(sorted(dropped.items())), "nic": nic}
