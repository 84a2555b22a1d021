"""The C engine: a thin cffi wrapper around ``mg_dp_burst`` (``include/mg_dp.h``).

Owns one ``struct mg_dp`` (connection table, fragment table, ICMP limiter, counters) and a
private frame pool laid out like the shared one.  Python copies a burst of packets into
free frames, crosses the seam once (``mg_dp_burst``), reads tx frames back and returns all
frames that are not held by the fragment table to its free list.  Buffers are allocated
once; the tables blob is copied into 8-byte-aligned memory (offsets in it assume that).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from maglev.datapath.ctmem import check_memory
from maglev.datapath.engine import (
    BURST_MAX,
    DRAIN_MAX,
    DROP_NAMES,
    Output,
    Packet,
    empty_stats,
    in_bursts,
)
from maglev.datapath.ref_conntrack import CT_STAT_NAMES
from maglev.errors import NativeError
from maglev.native import check, ffi, lib

FRAME = lib.MG_FRAME_SIZE
META = lib.MG_FRAME_META_SIZE
HEADROOM = lib.MG_FRAME_HEADROOM
SPARE = BURST_MAX  # spare frames per burst: one per packet, as a worker has (mg_worker.h)


class CDataPath:
    engine = "c"

    def __init__(self, tables: bytes, *, ct_capacity: int = 65536, worker: int = 0, now_ns: int = 0,
                 shared_ct: Any = None):
        """``shared_ct``: a table opened with ``maglev.rings.conntrack_shm.open_table`` (its
        ``.ct``, owned by this data path from here) instead of a private one."""
        self._tables_buf = None
        self.set_tables(tables)
        # the blob the kernel last ran with: its counters are indexed by that blob's VIPs
        # and backends until the next burst switches to a newer set_tables() blob
        self._kernel_buf = self._tables_buf
        hdr = ffi.cast("struct mg_tables_header *", self._tables_buf)
        if shared_ct is not None:
            dp = lib.mg_dp_new_ct(shared_ct, worker, hdr.hash_k0, hdr.hash_k1, now_ns)
        else:
            if 0 < ct_capacity <= lib.MG_CT_MAX_CAPACITY:
                check_memory(ct_capacity)  # a clear error with the numbers, nothing allocated
            dp = lib.mg_dp_new(ct_capacity, worker, hdr.hash_k0, hdr.hash_k1, now_ns)
        if dp == ffi.NULL:
            raise NativeError(22, f"data path: cannot create (capacity {ct_capacity} out of range or no memory)")
        self._dp = ffi.gc(dp, lib.mg_dp_free)
        self.n_frames = BURST_MAX + SPARE + lib.MG_FRAG_DEFAULT_HOLD_FRAMES + DRAIN_MAX
        self._pool = ffi.new("uint8_t[]", self.n_frames * FRAME)
        self._free = list(range(self.n_frames - 1, -1, -1))
        self._frames = ffi.new("uint32_t[]", BURST_MAX)
        self._spare = ffi.new("uint32_t[]", SPARE)
        self._tx = ffi.new("uint32_t[]", BURST_MAX + SPARE + DRAIN_MAX)
        self._drop = ffi.new("uint32_t[]", BURST_MAX + SPARE + DRAIN_MAX)
        self._io = ffi.new("struct mg_dp_io *")
        self._io.pool = self._pool
        self._io.frames = self._frames
        self._io.tx = self._tx
        self._io.tx_cap = BURST_MAX + SPARE + DRAIN_MAX
        self._io.drop = self._drop
        self._io.drop_cap = BURST_MAX + SPARE + DRAIN_MAX
        self._io.spare = self._spare
        self._extra_drops: dict[str, int] = {}

    def set_tables(self, tables: bytes) -> None:
        """Use a new tables blob from the next burst on (validated by the kernel too)."""
        n = len(tables)
        buf = ffi.new("uint64_t[]", (n + 7) // 8)
        ffi.memmove(buf, tables, n)
        check(lib.mg_tables_validate(buf, n), "tables blob validation")
        self._tables_buf = buf

    def _meta(self, idx: int):
        return ffi.cast("struct mg_frame_meta *", self._pool + idx * FRAME)

    def _read(self, idx: int) -> bytes:
        m = self._meta(idx)
        start = idx * FRAME + META + m.data_off
        return bytes(ffi.buffer(self._pool + start, m.len))

    def _collect(self) -> list[Output]:
        io = self._io
        out: list[Output] = []
        for i in range(io.n_tx):
            idx = io.tx[i]
            m = self._meta(idx)
            verdict = m.verdict
            if verdict == lib.MG_VERDICT_FORWARD and m.flags & lib.MG_FRAME_F_REDIRECT_OUT:
                verdict = lib.MG_VERDICT_REDIRECT  # a fragment sent to its owner instance
            out.append(Output(m.seq, "tx", verdict, self._read(idx), m.vip_index, m.backend_index))
            self._free.append(idx)
        for i in range(io.n_drop):
            idx = io.drop[i]
            m = self._meta(idx)
            out.append(Output(m.seq, "drop", m.verdict, b"", m.vip_index, m.backend_index))
            self._free.append(idx)
        used = set(io.spare[i] for i in range(io.n_spare_used))
        # spare frames the kernel did not take go back to the free list
        for i in range(io.n_spare):
            if io.spare[i] not in used:
                self._free.append(io.spare[i])
        return out

    def process(self, packets: Iterable[Packet], now_ns: int) -> list[Output]:
        return in_bursts(packets, lambda batch: self._burst(batch, now_ns), self._overflow)

    def _overflow(self, p: Packet) -> None:
        self._extra_drops["frame_overflow"] = self._extra_drops.get("frame_overflow", 0) + 1

    def _burst(self, batch: list[Packet], now_ns: int) -> list[Output]:
        if len(self._free) < len(batch):
            raise NativeError(12, "data path: frame pool exhausted (fragment table holds too many)")
        io = self._io
        for i, p in enumerate(batch):
            idx = self._free.pop()
            base = idx * FRAME
            ffi.memmove(self._pool + base, bytes(META), META)
            m = self._meta(idx)
            m.len = len(p.data)
            m.data_off = HEADROOM
            m.wire_len = p.wire_len or len(p.data)
            m.backend_index = -1
            m.seq = p.seq
            ffi.memmove(self._pool + base + META + HEADROOM, p.data, len(p.data))
            self._frames[i] = idx
        io.n = len(batch)
        n_spare = min(SPARE, len(self._free))
        for i in range(n_spare):
            self._spare[i] = self._free.pop()
        io.n_spare = n_spare
        check(lib.mg_dp_burst(self._dp, self._tables_buf, now_ns, io), "mg_dp_burst")
        self._kernel_buf = self._tables_buf
        return self._collect()

    def flush(self, now_ns: int) -> list[Output]:
        """Expire everything the fragment table holds (now_ns should be past every expiry)
        and return what comes out."""
        out: list[Output] = []
        io = self._io
        io.n = 0
        while True:
            io.n_spare = 0
            n = check(lib.mg_dp_flush(self._dp, self._tables_buf, now_ns, io), "mg_dp_flush")
            self._kernel_buf = self._tables_buf
            out += self._collect()
            if n == 0:
                return out

    def set_conntrack_policy(self, protected_percent: int, new_flows_per_s: int) -> None:
        """The protected-segment quota and the new-flow rate guard (mg_conntrack.h)."""
        check(lib.mg_ct_set_policy(lib.mg_dp_conntrack(self._dp), protected_percent, new_flows_per_s),
              "mg_ct_set_policy")

    def conntrack_table(self):
        return lib.mg_dp_conntrack(self._dp)

    def stats(self) -> dict:
        s = lib.mg_dp_stats(self._dp)
        d = empty_stats()
        for k in ("packets_in", "bytes_in", "forwarded", "bytes_out", "icmp_sent",
                  "icmp_forwarded", "fragments", "held", "split_pieces", "redirected", "redirect_in",
                  "quic_cid_routed", "quic_hashed", "cluster_in", "cluster_matched", "backup_out"):
            d[k] = int(getattr(s, k))
        d["drops"] = {DROP_NAMES[i]: int(s.drops[i]) for i in range(len(DROP_NAMES)) if s.drops[i]}
        for k, v in self._extra_drops.items():
            d["drops"][k] = d["drops"].get(k, 0) + v
            d["packets_in"] += v
        d["conntrack"] = {k: int(getattr(s.ct, k)) for k in CT_STAT_NAMES}
        hdr = ffi.cast("struct mg_tables_header *", self._kernel_buf)
        vc = lib.mg_dp_vip_counters(self._dp)
        bc = lib.mg_dp_backend_counters(self._dp)
        d["vips"] = {i: (int(vc[i].packets), int(vc[i].bytes)) for i in range(hdr.n_vips) if vc[i].packets}
        d["backends"] = {
            i: (int(bc[i].packets), int(bc[i].bytes)) for i in range(hdr.n_backends) if bc[i].packets
        }
        return d
