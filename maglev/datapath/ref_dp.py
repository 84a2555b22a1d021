"""The Python engine: a pure-Python reference of the burst kernel (``src/mg_dp.c``).

It takes the same tables blob, keeps the same state (connection table
:mod:`~maglev.datapath.ref_conntrack`, fragment table :mod:`~maglev.datapath.ref_frag`,
ICMP token bucket :class:`~maglev.datapath.ref_icmp.RateLimit`) and must produce the same
verdicts, backend choices and output bytes as the C engine for any packet sequence; the
hypothesis tests in ``tests/datapath/test_differential.py`` hold it to that.

It handles one packet at a time.  The C kernel works in two passes (stateless parse/hash
with prefetch, then state in input order), which is equivalent because the first pass
touches no state.  Per burst, as in C: drops and transmissions are reported in input order,
then what the fragment table releases or expires.  Frames are Python objects here (packet
bytes + headroom), not pool memory; ``headroom`` is tracked so encapsulation and ICMP see
the same limits as the C frame.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from maglev.datapath import ref_encap, ref_frag, ref_icmp
from maglev.datapath.engine import (
    BURST_MAX,
    DRAIN_MAX,
    DROP_CODES,
    DROP_NAMES,
    FRAME_HEADROOM,
    VERDICT_FORWARD,
    VERDICT_HELD,
    VERDICT_ICMP,
    VERDICT_REDIRECT,
    Output,
    Packet,
    empty_stats,
    in_bursts,
)
from maglev.datapath.ref_conntrack import ConnTable, Entry, ticks
from maglev.datapath.ref_parse import PF_FIRST, PF_FRAGMENT, Parsed, parse
from maglev.datapath.tables import (
    BACKEND_F_HEALTHY,
    BACKEND_F_PRESENT,
    VIP_F_ALLOW_FRAGMENTS,
    VIP_F_HASH_DST_PORT,
    VIP_F_HASH_SRC_IP,
    VIP_F_NO_CONNTRACK,
    VIP_F_UDP_NO_SPORT,
    TablesView,
    read_tables,
    select_key,
)
from maglev.errors import NativeError
from maglev.hashing.reference import siphash13
from maglev.native import lib

HEADROOM = FRAME_HEADROOM
EXPIRE_BUCKETS = lib.MG_DP_EXPIRE_BUCKETS
SPARE = 256  # spare frames per burst (= BURST_MAX): one per packet, as a worker has (mg_worker.h)
ZERO_MAC = bytes(6)
BCAST_MAC = b"\xff" * 6
D = DROP_CODES

FLOW, ICMP_FLOW, HASH_ONLY, FRAG_FIRST, FRAG_NEXT, QUIC = range(6)
HOLD_FRAMES = 256  # MG_FRAG_DEFAULT_HOLD_FRAMES: part of the C engine's pool size




@dataclass
class Frame:
    seq: int
    data: bytes
    headroom: int = HEADROOM
    verdict: int = 0
    vip_index: int = 0
    backend_index: int = -1


def _is_icmp_error(p: Parsed) -> bool:
    if p.proto == 1 and p.family == 4:
        return p.icmp_type in (3, 11, 12)
    if p.proto == 58 and p.family == 6:
        return 1 <= p.icmp_type <= 4
    return False


def _tx_then_drop(out: list[Output]) -> list[Output]:
    """The C kernel fills separate tx[] and drop[] arrays (each in order); the engines
    report a burst as tx[] followed by drop[]."""
    return [o for o in out if o.action == "tx"] + [o for o in out if o.action == "drop"]


class RefDataPath:
    engine = "python"

    def __init__(self, tables: bytes, *, ct_capacity: int = 65536, worker: int = 0, now_ns: int = 0):
        self.t: TablesView | None = None
        self._counted: TablesView | None = None  # the tables the counters are indexed by
        self.generation = None
        self.set_tables(tables)
        h = self.t.header
        self.ct = ConnTable(ct_capacity)
        # masked_on / masked_last in mg_dp.c: masked-key entries may be in the table
        self.masked_on = self.ct.n_used > 0
        self.masked_last = ticks(now_ns)
        self.frag = ref_frag.FragTable(
            ref_frag.DEFAULT_ENTRIES, ref_frag.DEFAULT_HOLD_FRAMES, ref_frag.DEFAULT_HOLD_BYTES,
            ref_frag.DEFAULT_TIMEOUT_MS * 1_000_000, (h["hash_k0"], h["hash_k1"]),
        )
        self.rl = ref_icmp.RateLimit(now_ns=now_ns)
        self.worker = worker
        self.s = empty_stats()
        self.drops = [0] * len(DROP_NAMES)
        self.vip_c: dict[int, list[int]] = {}
        self.be_c: dict[int, list[int]] = {}
        self.frames: dict[int, Frame] = {}  # frames held by the fragment table, by handle
        self._next_handle = 0

    def set_tables(self, tables: bytes) -> None:
        self.t = read_tables(tables)
        if self.generation is None:
            self._switch()

    def _switch(self) -> None:
        """As the C kernel at the start of a burst or flush: a new generation carries the
        counters to the new indices (until then they stay indexed like the old tables)."""
        gen = self.t.header["generation"]
        if gen != self.generation:
            self.generation = gen
            self._carry_counters(self._counted, self.t)
        self._counted = self.t

    def _carry_counters(self, old: TablesView | None, new: TablesView) -> None:
        """carry_counters() in mg_dp.c: each count moves to its VIP's / backend's index in
        the new tables (VIP by address, port, protocol; backend by 64-bit id); counts of
        removed ones are dropped."""
        if old is None:
            self.vip_c, self.be_c = {}, {}
            return
        be_c: dict[int, list[int]] = {}
        for i, c in self.be_c.items():
            nb = new.find_backend(old.backends[i].id, -1)
            if nb >= 0 and any(c):
                be_c[nb] = c
        vip_c: dict[int, list[int]] = {}
        for i, c in self.vip_c.items():
            ov = old.vips[i]
            nv = next((j for j, v in enumerate(new.vips)
                       if (v.addr, v.port, v.proto) == (ov.addr, ov.port, ov.proto)), -1)
            if nv >= 0 and any(c):
                vip_c[nv] = c
        self.vip_c, self.be_c = vip_c, be_c

    # ------------------------------------------------------------------ helpers

    def _drop(self, out: list[Output], fr: Frame, reason: int) -> None:
        fr.verdict = reason
        self.drops[reason] += 1
        out.append(Output(fr.seq, "drop", reason, b"", fr.vip_index, fr.backend_index))

    def _hash(self, key: bytes) -> int:
        h = self.t.header
        return siphash13(h["hash_k0"], h["hash_k1"], key)

    def _maglev(self, vip: int, hsh: int) -> int:
        v = self.t.vips[vip]
        return struct.unpack_from("=i", self.t.blob, v.table_off + 4 * (hsh % v.table_size))[0]

    def _ct_backend(self, vip: int, e: Entry) -> int:
        """ct_backend() in mg_dp.c: the entry's backend found by identity (the stored index
        is a hint; the entry follows its backend when a rebuild moved it), or -1 when that
        backend is gone from this VIP or unhealthy.  Drained (weight 0) backends keep flows."""
        b = e.backend
        bes = self.t.backends
        if not 0 <= b < len(bes) or bes[b].id != e.backend_id or bes[b].vip_index != vip:
            b = self.t.find_backend(e.backend_id, vip)
            if b < 0:
                return -1
            e.backend = b
        want = BACKEND_F_PRESENT | BACKEND_F_HEALTHY
        return b if bes[b].flags & want == want else -1

    def _other_key_backend(self, vip: int, key: bytes, now_t: int, tcp_ms: int, udp_ms: int,
                           promote: bool = False) -> int:
        """other_key_backend() in mg_dp.c: the backend of a live entry under a key the VIP
        used before a change of its hashing option, or -1."""
        slot = self.ct.find_slot(key, self._hash(key), now_t, tcp_ms, udp_ms)
        if slot < 0:
            return -1
        if promote:
            self.ct.promote(slot)
        return self._ct_backend(vip, self.ct.entry(slot))

    def _find_vip(self, key: bytes) -> int:
        dport = struct.unpack_from("!H", key, 34)[0]
        return self.t.find_vip(key[16:32], dport, key[36])

    def _frag_vip_check(self, p: Parsed) -> int:
        seen = False
        for v in self.t.vips:
            if v.proto != p.proto or v.addr != p.dst:
                continue
            if v.flags & VIP_F_ALLOW_FRAGMENTS:
                return 0
            seen = True
        return D["fragment_not_allowed"] if seen else D["no_vip"]

    def _frag_vip_ok(self, vip: int, p: Parsed) -> bool:
        """The remembered VIP index still names a VIP with the packet's address/protocol."""
        if not 0 <= vip < len(self.t.vips):
            return False
        v = self.t.vips[vip]
        return v.proto == p.proto and v.family == p.family and v.addr == p.dst

    def _frag_key(self, p: Parsed) -> bytes:
        return p.src + p.dst + struct.pack("=IBBxx", p.frag_id, p.proto, p.family)

    # ------------------------------------------------------------------ fragments across instances

    @staticmethod
    def _gre_off(pkt: bytes, p: Parsed, need: int) -> int:
        """gre_off() in mg_dp.c: the GRE header's offset when ``need`` bytes of the IP
        packet follow it, else 0 (also for a fragment or IPv6 extension headers)."""
        if p.frag & PF_FRAGMENT:
            return 0
        if p.family == 4:
            gre = p.l3_off + (pkt[p.l3_off] & 0x0F) * 4
        elif pkt[p.l3_off + 6] == 47:
            gre = p.l3_off + 40
        else:
            return 0
        return gre if p.l3_off + p.l3_len >= gre + need else 0

    @staticmethod
    def _decap_eth(fr: Frame, pkt: bytes, inner_off: int, ptype: int, end: int) -> tuple[int, Parsed]:
        """decap_eth() in mg_dp.c: ``fr`` becomes its inner packet at ``inner_off`` as an
        Ethernet frame (outer MACs, ethertype ``ptype``), re-parsed."""
        fr.data = pkt[:12] + struct.pack("!H", ptype) + pkt[inner_off:end]
        fr.headroom += inner_off - 14
        return parse(fr.data)

    def _redirect_in(self, fr: Frame, p: Parsed) -> tuple[int, Parsed]:
        """redirect_in() in mg_dp.c: (0, p) when the GRE packet is not addressed to our pool
        address, (1, inner) when it was a marked redirect from another pool member and
        ``fr`` now holds the inner packet as an Ethernet frame, else (drop reason, p)."""
        h = self.t.header
        pool = self.t.pool
        if p.family != h["pool_family"] or p.dst != pool[h["pool_self"]]:
            return 0, p
        if not any(i != h["pool_self"] and a == p.src for i, a in enumerate(pool)):
            return D["redirect_foreign"], p
        pkt = fr.data
        gre, end = self._gre_off(pkt, p, 8), p.l3_off + p.l3_len
        if not gre:
            return D["bad_redirect"], p
        flags, ptype, key = struct.unpack_from("!HHI", pkt, gre)
        if flags != ref_encap.GRE_F_KEY or key != ref_encap.REDIRECT_GRE_KEY:
            return D["redirect_unmarked"], p
        if ptype not in (0x0800, 0x86DD):
            return D["bad_redirect"], p
        rc, inner = self._decap_eth(fr, pkt, gre + 8, ptype, end)
        if rc:
            return rc, inner
        if not inner.frag & PF_FRAGMENT:
            return D["bad_redirect"], inner
        return 1, inner

    def _owner(self, hsh: int) -> int:
        """frag_owner() in mg_dp.c: the pool index owning a fragment, or -1 for ourselves."""
        n = self.t.header["n_pool"]
        if n < 2:
            return -1
        o = hsh % n
        return -1 if o == self.t.header["pool_self"] else o

    def _redirect_out(self, out: list[Output], fr: Frame, p: Parsed, vip: int, owner: int,
                      hsh: int, spare: list[int]) -> None:
        """redirect_out() in mg_dp.c: the fragment to pool member ``owner`` in marked GRE;
        an IPv4 fragment with DF clear that does not fit the MTU with the GRE is split
        first (as :meth:`_forward` splits) and every piece goes in its own GRE packet."""
        h = self.t.header
        fam = h["pool_family"]
        alen = 4 if fam == 4 else 16
        pkt = fr.data
        params = ref_encap.EncapParams(
            type=ref_encap.GRE_REDIRECT,
            outer_family=fam,
            src=self.t.pool[h["pool_self"]][:alen],
            dst=self.t.pool[owner][:alen],
            eth_src=h["own_mac"] if h["own_mac"] != ZERO_MAC else pkt[0:6],
            eth_dst=h["gateway_mac"] if h["gateway_mac"] != ZERO_MAC else pkt[6:12],
        )
        fr.vip_index = vip
        ovh = ref_encap.overhead(ref_encap.GRE_REDIRECT, fam)
        pieces = [fr]
        if p.l3_len + ovh > h["mtu"]:
            if p.family != 4:
                self._drop(out, fr, D["too_big"])  # IPv6: routers never fragment
                return
            split = self._split_ipv4(out, fr, p, h["mtu"] - ovh, spare, vip, fr.backend_index)
            if split is None:  # EINVAL: DF set (or a header that cannot be split)
                return
            pieces = split

        def sent(f: Frame, new: bytes) -> None:
            f.data = new
            f.verdict = VERDICT_REDIRECT
            f.vip_index = vip
            self.s["bytes_out"] += len(new)
            out.append(Output(f.seq, "tx", VERDICT_REDIRECT, new, vip, f.backend_index))

        if self._encap_pieces(out, pieces, p, hsh, params, vip, sent):
            self.s["redirected"] += 1

    def _split_ipv4(self, out: list[Output], fr: Frame, p: Parsed, payload_mtu: int,
                    spare: list[int], vip: int, b: int) -> list[Frame] | None:
        """mg_frag_split_ipv4 on a DF-clear IPv4 packet: ``fr`` becomes the first piece and
        every other piece takes a spare frame; None after counting the drop (no spare frame,
        DF set, a header that cannot be split)."""
        try:
            parts = ref_frag.split_ipv4(fr.data, p.l3_off, payload_mtu, min(len(spare), BURST_MAX))
        except NativeError as exc:
            self._drop(out, fr, D["no_spare_frame"] if exc.errno == errno.ENOSPC else D["too_big"])
            return None
        fr.data = parts[0]
        pieces = [fr]
        for extra in parts[1:]:
            spare.pop()
            pieces.append(Frame(fr.seq, extra, HEADROOM, 0, vip, b))
        self.s["split_pieces"] += len(parts) - 1
        return pieces

    def _encap_pieces(self, out: list[Output], pieces: list[Frame], p: Parsed, hsh: int,
                      params: ref_encap.EncapParams, vip: int,
                      sent: Callable[[Frame, bytes], None]) -> bool:
        """Encapsulate each piece in order, ``sent(piece, bytes)`` for each that made it.
        The first piece failing drops the packet (every piece, counted once): False; a later
        piece failing is freed alone and the packet still counts once."""
        for i, f in enumerate(pieces):
            try:
                new = ref_encap.encap(f.data, p.l3_off, p.family, hsh & 0xFFFFFFFF, params,
                                      headroom=f.headroom)
            except NativeError as exc:
                reason = D["no_headroom"] if exc.errno == errno.ENOSPC else D["bad_frame"]
                if i == 0:
                    self._drop(out, f, reason)
                    for other in pieces[1:]:
                        other.verdict = reason
                        out.append(Output(other.seq, "drop", reason, b"", vip, other.backend_index))
                    return False
                f.verdict = reason
                out.append(Output(f.seq, "drop", reason, b"", vip, f.backend_index))
                continue
            sent(f, new)
        return True

    # ------------------------------------------------------------------ VIP matching (4.2)

    def _cluster_vip(self, key: bytes) -> int:
        """cluster_vip() in mg_dp.c: this cluster's VIP for a peer cluster's address, or -1."""
        family = key[37]
        peer, local = self.t.cluster_map(key[16:32], family)
        if peer <= 0:
            return -1
        return self._find_vip(key[:16] + local + key[32:])

    def _cluster_in(self, fr: Frame, p: Parsed) -> tuple[int, Parsed]:
        """cluster_in() in mg_dp.c: (0, p) when the packet is not plain GRE from a peer
        cluster's forwarder to our source address, (1, inner) when ``fr`` now holds the
        inner packet as an Ethernet frame, else (drop reason, p)."""
        h = self.t.header
        alen = 4 if p.family == 4 else 16
        if not h["has_src4" if p.family == 4 else "has_src6"] or p.dst[:alen] != (h["src4"] if p.family == 4 else h["src6"]):
            return 0, p
        known = any(
            self.t.forwarders[j][1] == p.family and self.t.forwarders[j][0] == p.src
            for c in self.t.clusters[1:] for j in range(c.fwd_first, c.fwd_first + c.n_fwd)
        )
        if not known:
            return 0, p
        bad = D["bad_cluster_gre"]
        pkt = fr.data
        gre, end = self._gre_off(pkt, p, 4 + 20), p.l3_off + p.l3_len
        if not gre:
            return bad, p
        flags, ptype = struct.unpack_from("!HH", pkt, gre)
        if flags != 0 or ptype not in (0x0800, 0x86DD):
            return bad, p
        rc, inner = self._decap_eth(fr, pkt, gre + 4, ptype, end)
        if rc:
            return rc, inner
        if inner.frag & PF_FRAGMENT or inner.proto == 47:
            return bad, inner
        return 1, inner

    def _cluster_out(self, out: list[Output], fr: Frame, p: Parsed, vip: int, hsh: int,
                     now_ns: int, spare: list[int]) -> bool:
        """cluster_out() in mg_dp.c: GRE to a forwarder of the first backup cluster."""
        h = self.t.header
        c = self.t.clusters[h["backup_cluster"]]
        addr, fam = self.t.forwarders[c.fwd_first + hsh % c.n_fwd]
        fr.vip_index, fr.backend_index = vip, -1
        alen = 4 if fam == 4 else 16
        pkt = fr.data
        params = ref_encap.EncapParams(
            type=ref_encap.GRE,
            outer_family=fam,
            src=(h["src4"] if fam == 4 else h["src6"])[:alen],
            dst=addr[:alen],
            eth_src=h["own_mac"] if h["own_mac"] != ZERO_MAC else pkt[0:6],
            eth_dst=h["gateway_mac"] if h["gateway_mac"] != ZERO_MAC else pkt[6:12],
            inner_eth_src=bytes(6),
            inner_eth_dst=bytes(6),
            vni=0,
            vxlan_port=0,
        )
        return self._send(out, fr, p, vip, -1, hsh, now_ns, spare, params)

    # ------------------------------------------------------------------ forwarding

    def _forward(self, out: list[Output], fr: Frame, p: Parsed, vip: int, b: int, hsh: int,
                 now_ns: int, spare: list[int]) -> bool:
        h = self.t.header
        v = self.t.vips[vip]
        be = self.t.backends[b]
        pkt = fr.data
        fr.vip_index, fr.backend_index = vip, b
        l2 = v.encap == ref_encap.L2
        outer_family = v.family if l2 else be.family
        src = b""
        if not l2:
            if be.family == 4:
                if not h["has_src4"]:
                    self._drop(out, fr, D["no_source_address"])
                    return False
                src = h["src4"]
            else:
                if not h["has_src6"]:
                    self._drop(out, fr, D["no_source_address"])
                    return False
                src = h["src6"]
        alen = 4 if outer_family == 4 else 16
        params = ref_encap.EncapParams(
            type=v.encap,
            outer_family=outer_family,
            src=(src or bytes(16))[:alen],
            dst=be.addr[:alen],
            eth_src=h["own_mac"] if h["own_mac"] != ZERO_MAC else pkt[0:6],
            eth_dst=be.mac if l2 else (h["gateway_mac"] if h["gateway_mac"] != ZERO_MAC else pkt[6:12]),
            inner_eth_src=h["inner_mac"],
            inner_eth_dst=be.mac if be.mac != ZERO_MAC else BCAST_MAC,
            vni=v.vxlan_vni,
            vxlan_port=v.vxlan_port,
        )
        return self._send(out, fr, p, vip, b, hsh, now_ns, spare, params)

    def _send(self, out: list[Output], fr: Frame, p: Parsed, vip: int, b: int, hsh: int,
              now_ns: int, spare: list[int], params: ref_encap.EncapParams) -> bool:
        """send_encap() in mg_dp.c: path MTU, encapsulation with ``params``, transmission;
        ``b`` < 0 for a backup cluster's forwarder (no per-backend counters)."""
        h = self.t.header
        pkt = fr.data
        try:
            ovh = ref_encap.overhead(params.type, params.outer_family)
        except NativeError:
            self._drop(out, fr, D["bad_tables"])
            return False
        mtu = h["mtu"]
        try:
            pm = ref_icmp.pmtu_check(pkt, p.l3_off, p.family, p.proto, p.l4_off, ovh, mtu)
        except NativeError:
            pm = -1
        pieces = [fr]
        if pm == ref_icmp.PMTU_ICMP:
            if not self.rl.take(now_ns):
                self._drop(out, fr, D["icmp_rate_limited"])
                return False
            try:
                new = ref_icmp.too_big(pkt, p.l3_off, p.family, mtu - ovh, headroom=fr.headroom)
            except NativeError as exc:
                self._drop(out, fr, D["no_headroom"] if exc.errno == errno.ENOSPC else D["too_big"])
                return False
            fr.headroom -= len(new) - len(pkt)
            fr.data = new
            self.drops[D["too_big"]] += 1
            self.s["icmp_sent"] += 1
            fr.verdict = VERDICT_ICMP
            self.s["bytes_out"] += len(new)
            out.append(Output(fr.seq, "tx", VERDICT_ICMP, new, fr.vip_index, fr.backend_index))
            return False
        if pm == ref_icmp.PMTU_FRAGMENT:
            split = self._split_ipv4(out, fr, p, mtu - ovh, spare, vip, b)
            if split is None:
                return False
            pieces = split
        elif pm != ref_icmp.PMTU_FITS:
            self._drop(out, fr, D["too_big"])
            return False

        def sent(f: Frame, new: bytes) -> None:
            f.data = new
            f.verdict = VERDICT_FORWARD
            f.vip_index, f.backend_index = vip, b
            self.s["bytes_out"] += len(new)
            if b >= 0:
                c = self.be_c.setdefault(b, [0, 0])
                c[0] += 1
                c[1] += len(new)
            out.append(Output(f.seq, "tx", VERDICT_FORWARD, new, vip, b))

        # (split pieces carry backend b, so a failed piece's drop names b)
        if not self._encap_pieces(out, pieces, p, hsh, params, vip, sent):
            return False
        self.s["forwarded"] += 1
        if p.frag & PF_FRAGMENT:
            self.s["fragments"] += 1
        return True

    # ------------------------------------------------------------------ bursts

    def process(self, packets: Iterable[Packet], now_ns: int) -> list[Output]:
        return in_bursts(packets, lambda batch: self._burst(batch, now_ns), self._overflow)

    def _overflow(self, p: Packet) -> None:
        self.drops[D["frame_overflow"]] += 1
        self.s["packets_in"] += 1

    def _burst(self, batch: list[Packet], now_ns: int) -> list[Output]:
        self._switch()
        out: list[Output] = []
        self.s["packets_in"] += len(batch)
        h = self.t.header
        now_t = ticks(now_ns)
        tcp_ms, udp_ms = h["tcp_timeout_ms"], h["udp_timeout_ms"]
        # Spare frames: the C front-end offers min(64, free) spares; the Python engine has no
        # pool limit beyond the same frame count, mirrored here.
        spare = list(range(min(SPARE, self._free_frames(len(batch)))))
        for pk in batch:
            fr = Frame(pk.seq, bytes(pk.data))
            self.s["bytes_in"] += len(fr.data)
            rc, p = parse(fr.data)
            if rc:
                self._drop(out, fr, rc)
                continue
            redirected = False
            from_cluster = False
            if h["n_clusters"] > 1 and p.proto == 47:
                r, p = self._cluster_in(fr, p)
                if r > 1:
                    self._drop(out, fr, r)
                    continue
                from_cluster = r == 1
                self.s["cluster_in"] += from_cluster
            if h["n_pool"] and p.proto == 47 and not from_cluster:
                r, p = self._redirect_in(fr, p)
                if r > 1:
                    self._drop(out, fr, r)
                    continue
                if r == 1:
                    redirected = True
                    self.s["redirect_in"] += 1
            key = p.key()
            kind = FLOW
            quic_b = -1
            if p.frag & PF_FRAGMENT:
                if not p.frag & PF_FIRST:
                    r = self._frag_vip_check(p)
                    if r:
                        self._drop(out, fr, r)
                        continue
                    if not redirected and h["n_pool"] > 1:
                        hsh = self._hash(p.key(ports=False))
                        owner = self._owner(hsh)
                        if owner >= 0:
                            self._redirect_out(out, fr, p, 0, owner, hsh, spare)
                            continue
                    self._frag_next(out, fr, p, now_ns, spare)
                    continue
                kind = FRAG_FIRST
            elif p.l4_off and _is_icmp_error(p):
                try:
                    q, key = ref_icmp.quoted_flow(fr.data, p.l3_off, p.family, p.l4_off)
                    kind = ICMP_FLOW if q == ref_icmp.QUOTE_5TUPLE else HASH_ONLY
                except NativeError as exc:
                    if exc.errno != errno.ENOMSG:
                        self._drop(out, fr, D["bad_icmp"])
                        continue
                    key = p.key()
            vip = self._find_vip(key)
            if vip < 0 and h["n_clusters"] > 1 and kind != FRAG_FIRST:
                vip = self._cluster_vip(key)  # a peer cluster's address (4.2)
                self.s["cluster_matched"] += vip >= 0
            if vip < 0:
                self._drop(out, fr, D["no_vip"])
                continue
            vflags = self.t.vips[vip].flags
            if kind == FRAG_FIRST:
                if not vflags & VIP_F_ALLOW_FRAGMENTS:
                    self._drop(out, fr, D["fragment_not_allowed"])
                    continue
                key = key[:32] + bytes(4) + key[36:]
            else:  # per-VIP hashing options (mg_vip_select_key)
                plain = key
                key = select_key(vflags, key)
                if vflags & VIP_F_NO_CONNTRACK:
                    kind = HASH_ONLY
                if self.t.vips[vip].quic_sid_len and p.proto == 17:
                    kind, quic_b = self._quic_kind(vip, fr.data, p, kind)
            hsh = self._hash(key)
            if kind == FRAG_FIRST and not redirected:
                owner = self._owner(hsh)
                if owner >= 0:
                    self._redirect_out(out, fr, p, vip, owner, hsh, spare)
                    continue
            b = -1
            if kind == QUIC:
                b = quic_b
            elif kind in (FLOW, ICMP_FLOW):
                mid = kind == FLOW and p.proto == 6 and not p.tcp_flags & 0x02
                if kind == FLOW and vflags & (VIP_F_HASH_SRC_IP | VIP_F_HASH_DST_PORT):
                    self.masked_on, self.masked_last = True, now_t
                if mid and vflags & (VIP_F_HASH_SRC_IP | VIP_F_HASH_DST_PORT):
                    b = self._other_key_backend(vip, plain, now_t, tcp_ms, udp_ms, promote=True)
                slot = -2 if b >= 0 else self.ct.find_slot(key, hsh, now_t, tcp_ms, udp_ms)
                if slot >= 0:
                    e = self.ct.entry(slot)
                    if kind == FLOW and not (p.proto == 6 and p.tcp_flags & 0x02):
                        self.ct.promote(slot)  # a later packet that is not a SYN
                    b = self._ct_backend(vip, e)
                    if b < 0:
                        self.ct.stats.reselected += 1
                        b = self._maglev(vip, hsh)
                        if b >= 0:
                            e.backend, e.backend_id = b, self.t.backends[b].id
                elif slot == -1:
                    if (mid and not vflags & (VIP_F_HASH_SRC_IP | VIP_F_HASH_DST_PORT | VIP_F_UDP_NO_SPORT)
                            and self.masked_on and (now_t - self.masked_last) & 0xFFFFFFFF < tcp_ms):
                        b = self._other_key_backend(vip, key[:32] + bytes(4) + key[36:], now_t, tcp_ms, udp_ms)
                        if b < 0:
                            b = self._other_key_backend(vip, bytes(16) + key[16:32] + bytes(2) + key[34:],
                                                        now_t, tcp_ms, udp_ms)
                    if b < 0:
                        b = self._maglev(vip, hsh)
                    if b >= 0 and kind == FLOW and self.ct.admit(now_t):
                        self.ct.add(key, hsh, now_t, tcp_ms, udp_ms, b, self.t.backends[b].id)
            else:
                b = self._maglev(vip, hsh)
            if b < 0:
                if h["backup_cluster"] and not from_cluster and kind != FRAG_FIRST:
                    c = self.vip_c.setdefault(vip, [0, 0])
                    c[0] += 1
                    c[1] += len(fr.data)
                    self.s["backup_out"] += self._cluster_out(out, fr, p, vip, hsh, now_ns, spare)
                    continue
                self._drop(out, fr, D["no_backend"])
                continue
            if kind == FRAG_FIRST:
                self.frag.first(self._frag_key(p), b, vip, now_ns)
            c = self.vip_c.setdefault(vip, [0, 0])
            c[0] += 1
            c[1] += len(fr.data)
            fw = self._forward(out, fr, p, vip, b, hsh, now_ns, spare)
            if fw and (kind == ICMP_FLOW or (kind == HASH_ONLY and p.l4_off and _is_icmp_error(p))):
                self.s["icmp_forwarded"] += 1
        self._drain(out, now_ns, EXPIRE_BUCKETS, spare)
        return _tx_then_drop(out)

    def _quic_kind(self, vip: int, data: bytes, p: Parsed, kind: int) -> tuple[int, int]:
        """quic_kind() in mg_dp.c: (QUIC, backend) when the packet's server ID names a
        healthy backend of the VIP, else (kind, -1); counted either way."""
        if kind not in (FLOW, HASH_ONLY):
            return kind, -1
        b = self.t.quic_route(vip, data, p)
        if b < 0:
            self.s["quic_hashed"] += 1
            return kind, -1
        self.s["quic_cid_routed"] += 1
        return QUIC, b

    def _free_frames(self, n: int) -> int:
        # Same pool size as the C engine: BURST_MAX + SPARE + hold frames + DRAIN_MAX.
        total = BURST_MAX + SPARE + HOLD_FRAMES + DRAIN_MAX
        return total - n - len(self.frames)

    def _frag_next(self, out: list[Output], fr: Frame, p: Parsed, now_ns: int, spare: list[int]) -> None:
        handle = self._next_handle
        self._next_handle += 1
        try:
            rc, _fb, fv = self.frag.next(self._frag_key(p), handle, len(fr.data), now_ns)
        except NativeError:
            rc, _fb, fv = -errno.EINVAL, -1, 0
        if rc < 0:
            reason = D["frag_hold_limit"] if rc == -errno.ENOBUFS else D["frag_table_full"]
            self._drop(out, fr, reason)
            return
        if rc == 1:
            fr.verdict = VERDICT_HELD
            self.frames[handle] = fr
            self.s["held"] += 1
            return
        if not self._frag_vip_ok(fv, p):
            self._drop(out, fr, D["no_vip"])
            return
        hsh = self._hash(p.key(ports=False))
        b = self._maglev(fv, hsh)  # fragments: always the 3-tuple Maglev choice (see C)
        if b < 0:
            self._drop(out, fr, D["no_backend"])
            return
        self.vip_c.setdefault(fv, [0, 0])
        c = self.vip_c[fv]
        c[0] += 1
        c[1] += len(fr.data)
        self._forward(out, fr, p, fv, b, hsh, now_ns, spare)

    def _drain(self, out: list[Output], now_ns: int, max_buckets: int, spare: list[int]) -> None:
        self.frag.expire(now_ns, max_buckets)
        for frame, _backend, o_vip, o_reason in self.frag.drain(DRAIN_MAX):
            fr = self.frames.pop(frame)
            if self.s["held"]:
                self.s["held"] -= 1
            if o_reason == ref_frag.R_EXPIRED:
                self._drop(out, fr, D["frag_expired"])
                continue
            if o_reason != ref_frag.R_RELEASED:
                self._drop(out, fr, D["frag_evicted"])
                continue
            rc, p = parse(fr.data)
            if rc:
                self._drop(out, fr, rc)
                continue
            vip = o_vip
            hsh = self._hash(p.key(ports=False))
            if not self._frag_vip_ok(vip, p):
                self._drop(out, fr, D["no_vip"])
                continue
            b = self._maglev(vip, hsh)
            if b < 0:
                self._drop(out, fr, D["no_backend"])
                continue
            self._forward(out, fr, p, vip, b, hsh, now_ns, spare)

    def flush(self, now_ns: int) -> list[Output]:
        self._switch()
        out: list[Output] = []
        while True:
            part: list[Output] = []
            self._drain(part, now_ns, self.frag.nbuckets, [])
            out += _tx_then_drop(part)
            if not part:
                return out

    def set_conntrack_policy(self, protected_percent: int, new_flows_per_s: int) -> None:
        """The protected-segment quota and the new-flow rate guard (mg_conntrack.h)."""
        self.ct.set_policy(protected_percent, new_flows_per_s)

    def stats(self) -> dict:
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.s.items()}
        d["drops"] = {DROP_NAMES[i]: n for i, n in enumerate(self.drops) if n}
        d["conntrack"] = self.ct.stats.as_dict()
        d["vips"] = {i: tuple(c) for i, c in sorted(self.vip_c.items())}
        d["backends"] = {i: tuple(c) for i, c in sorted(self.be_c.items())}
        return d
