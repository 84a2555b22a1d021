"""The tables blob: the data path's view of the config (VIP map, backends, Maglev tables).

Config is data and tables are derived (docs/architecture.md): :func:`build_tables` turns a
validated :class:`~maglev.config.Config` plus the set of unhealthy (VIP, backend) pairs into
one position-independent ``bytes`` object -- offsets, never pointers -- that the config
manager copies into shared memory and every worker's burst kernel reads.  The byte layout
is defined once, in ``maglev/_cffi_src/include/mg_tables.h``; this module writes it with
``struct`` using the sizes and offsets cffi reports for the compiled structs, and
:func:`read_tables` parses it back for tests, tools and the Python reference engine.

Design choices (see docs/datapath.md):

* One backend entry per (VIP, backend) pair, grouped by VIP, in config order; a Maglev
  table entry is an index into that global array.  Unhealthy backends (``down``) stay in
  the array with the HEALTHY flag clear and are left out of their VIP's Maglev table, so
  connection-table hits on them are re-selected; weight-0 backends stay healthy but get
  no slots (draining: established flows continue, new flows go elsewhere).
* Backend ``id`` = SipHash-1-3("maglev/bkid/v1.0"; "<vip key>\\0<backend key>"), all 64
  bits: a stable identity of the (VIP, backend) pair.  Indices are not stable (removing a
  backend shifts every later one), so the connection table stores (index, id), trusts a
  remembered index only while the entry there still carries the id, and otherwise finds
  the backend again through the blob's id map (open addressing, index + 1 per slot,
  probed from the id's low bits) -- a flow re-selects only when its backend is gone or
  unhealthy, never because another backend was added or removed.
* ``generation``: when the caller gives none, a 64-bit digest of the blob's content, so two
  different blobs never share a generation (the kernel re-validates on any change).
* Outer Ethernet addresses are not in the config: by default the kernel reflects the
  frame to the MAC it came from (the router) from the MAC it was sent to; ``own_mac`` /
  ``gateway_mac`` override that.  VXLAN's inner source MAC defaults to the locally
  administered 02:6d:67:00:00:01 and its inner destination is the backend's ``mac`` or
  broadcast when unset (a Linux vxlan device accepts both).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from maglev.config import Config
from maglev.errors import ConfigError, PacketError
from maglev.hashing import build_table
from maglev.native import ffi as _ffi
from maglev.native import lib as _lib


def siphash13(k0: int, k1: int, data: bytes) -> int:
    """The C SipHash-1-3 (the same function as the reference, pinned by tests/hashing)."""
    return int(_lib.mg_siphash13(k0, k1, data, len(data)))

__all__ = [
    "BackendEntry",
    "TablesView",
    "VipEntry",
    "build_tables",
    "hash_inputs",
    "read_tables",
    "select_key",
    "vip_flags",
    "vip_hash",
]

MAGIC = 0x4254474D
VERSION = 5
MAX_POOL = 64  # MG_TABLES_MAX_POOL
MAX_VIPS = 4096
MAX_BACKENDS = 65536
VIP_F_ALLOW_FRAGMENTS = 0x01
VIP_F_HASH_SRC_IP = 0x02
VIP_F_HASH_DST_PORT = 0x04
VIP_F_UDP_NO_SPORT = 0x08
VIP_F_NO_CONNTRACK = 0x10
VIP_F_KNOWN = 0x1F
HASH_FLAGS = {"5tuple": 0, "src_ip": VIP_F_HASH_SRC_IP, "dst_port": VIP_F_HASH_DST_PORT}
MAX_PRIORITY = 7
BACKEND_F_PRESENT = 0x01
BACKEND_F_HEALTHY = 0x02
# Encapsulation names and codes: the codes are C's (MG_ENCAP_*, mg_encap.h).
ENCAP_CODES = {"gre": int(_lib.MG_ENCAP_GRE), "ipip": int(_lib.MG_ENCAP_IPIP),
               "vxlan": int(_lib.MG_ENCAP_VXLAN), "l2": int(_lib.MG_ENCAP_L2)}
ENCAP_NAMES = {code: name for name, code in ENCAP_CODES.items()}
PROTO_CODES = {"tcp": 6, "udp": 17}
PROTO_NAMES = {code: name for name, code in PROTO_CODES.items()}
DEFAULT_INNER_MAC = bytes.fromhex("026d67000001")
BACKEND_ID_KEY = struct.unpack("<QQ", b"maglev/bkid/v1.0")

# struct layouts (mg_tables.h); sizes are checked against the compiled module in tests.
HDR = struct.Struct("=IHHQQQQIIIIIIII4s16sBBH6s6s6sHIIIHHBBBBIIH14s")
VIP = struct.Struct("=16sHBBBBHIIQIIIB3sIHBB")
QUIC_SID = struct.Struct("=QII")  # struct mg_quic_sid
QUIC_MAX_SID_LEN = 8
QUIC_MAX_CID_LEN = 20
BACKEND = struct.Struct("=16s6sBBQHH4x")
CLUSTER = struct.Struct("=16s4sBBBxHH4x")  # struct mg_cluster
FWD = struct.Struct("=16sB7x")  # struct mg_cluster_fwd
MAX_CLUSTERS = 17  # MG_TABLES_MAX_CLUSTERS: this cluster + 16 peers
MAX_FWD = 256
assert HDR.size == 160 and VIP.size == 64 and BACKEND.size == 40 and CLUSTER.size == 32 and FWD.size == 24


def _addr16(addr: str) -> tuple[bytes, int]:
    """16 bytes (IPv4 first, zero padded) and the family; inet_pton is ~20x faster than
    ipaddress and the config has already validated the text."""
    if ":" in addr:
        return socket.inet_pton(socket.AF_INET6, addr), 6
    return socket.inet_pton(socket.AF_INET, addr) + bytes(12), 4


def _remap_into(out: bytearray, off: int, entries: array, remap: list[int]) -> None:
    """Maglev entries (indices into the VIP's healthy backends, -1 empty) as global backend
    indices, packed int32 into ``out`` at ``off``: one C pass over the array's buffer
    (mg_tables_remap) straight into the blob, no intermediate copy (each copy of a big
    table holds the GIL: session 8, docs/operations.md)."""
    n = len(entries)
    if off % 4 or off + 4 * n > len(out):
        raise ValueError("Maglev table outside the blob")
    if _lib is None:  # pragma: no cover
        out[off : off + 4 * n] = struct.pack(f"={n}i", *(remap[e] if e >= 0 else -1 for e in entries))
        return
    dst = _ffi.cast("int32_t *", _ffi.from_buffer(out)) + off // 4
    rc = _lib.mg_tables_remap(dst, _ffi.from_buffer("int32_t[]", entries), n,
                              _ffi.new("int32_t[]", remap or [0]), len(remap))
    if rc != 0:
        raise ValueError("Maglev table entry outside its backends")


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


def vip_hash(addr16: bytes, port_be: int, proto: int) -> int:
    """mg_vip_hash(): ``port_be`` is the 16-bit value as C loads it from network-order bytes."""
    w = struct.unpack("=4I", addr16)
    x = (w[0] ^ w[1] ^ w[2] ^ w[3] ^ (port_be << 8) ^ proto) & 0xFFFFFFFF
    return (x * 0x9E3779B1) & 0xFFFFFFFF


def vip_flags(v: Any) -> int:
    """The MG_VIP_F_* flags of a config VIP (allow_fragments and the hashing options)."""
    flags = VIP_F_ALLOW_FRAGMENTS if v.allow_fragments else 0
    flags |= HASH_FLAGS[v.hash]
    if v.udp_ignore_src_port:
        flags |= VIP_F_UDP_NO_SPORT
    if not v.conntrack:
        flags |= VIP_F_NO_CONNTRACK
    return flags


def select_key(flags: int, key: bytes) -> bytes:
    """mg_vip_select_key(): the 40-byte flow key with the fields a VIP's hashing flags
    leave out set to zero (src 0..16, dst 16..32, sport 32..34, dport 34..36, proto 36)."""
    if flags & VIP_F_HASH_SRC_IP:
        return key[:32] + bytes(4) + key[36:]
    if flags & VIP_F_HASH_DST_PORT:
        return bytes(16) + key[16:32] + bytes(2) + key[34:]
    if flags & VIP_F_UDP_NO_SPORT and key[36] == 17:
        return key[:32] + bytes(2) + key[34:]
    return key


def hash_inputs(flags: int, proto: int) -> str:
    """What a VIP's flows are hashed (and tracked) on, in words (whereis, ctl)."""
    if flags & VIP_F_HASH_SRC_IP:
        s = "source address, VIP address, protocol (hash = src_ip)"
    elif flags & VIP_F_HASH_DST_PORT:
        s = "VIP address, destination port, protocol (hash = dst_port)"
    elif flags & VIP_F_UDP_NO_SPORT and proto == 17:
        s = "source address, VIP address, destination port, protocol (udp_ignore_src_port)"
    else:
        s = "5-tuple"
    return s + ("; no connection table (conntrack = false)" if flags & VIP_F_NO_CONNTRACK else "")


def port_be(port: int) -> int:
    """The uint16 C sees when it loads ``port`` stored in network byte order."""
    return struct.unpack("=H", port.to_bytes(2, "big"))[0]


def backend_id(vip_key: str, backend_key: str) -> int:
    """The 64-bit identity of a (VIP, backend) pair, the same in every rebuild."""
    return siphash13(*BACKEND_ID_KEY, f"{vip_key}\0{backend_key}".encode())


def _backend_ids(vip_key: str, backend_keys: list[str]) -> list[int]:
    """backend_id() of every backend of one VIP: one C call (mg_tables_ids)."""
    if _lib is None or not backend_keys:  # pragma: no cover - without the extension
        return [backend_id(vip_key, k) for k in backend_keys]
    msgs = [f"{vip_key}\0{k}".encode() for k in backend_keys]
    offs = [0]
    for m in msgs:
        offs.append(offs[-1] + len(m))
    out = _ffi.new("uint64_t[]", len(msgs))
    data = b"".join(msgs)
    if _lib.mg_tables_ids(*BACKEND_ID_KEY, data, _ffi.new("uint32_t[]", offs), len(msgs), out):
        raise ValueError("backend ids: bad offsets")
    return list(_ffi.unpack(out, len(msgs)))


def _bits_for(n: int) -> int:
    """Bits of an open-addressing index with at least 2n slots (>= 2)."""
    bits = 1
    while (1 << bits) < 2 * max(n, 1):
        bits += 1
    return bits


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _pool(config: Config) -> tuple[list[bytes], int, int]:
    """The maglev pool in canonical order (16-byte addresses sorted by their bytes, so
    every instance numbers the members alike whatever order its file lists them in), this
    instance's index in it and the family; ([], 0, 0) without a pool.  The config parser
    has checked the family rules and that the instance's own address is a member."""
    inst = config.instance
    if not inst.pool:
        return [], 0, 0
    if len(inst.pool) > MAX_POOL:
        raise ConfigError([f"instance.pool: {len(inst.pool)} addresses; at most {MAX_POOL}"])
    members = sorted(_addr16(a) for a in inst.pool)
    family = members[0][1]
    own = inst.source_ipv4 if family == 4 else inst.source_ipv6
    addrs = [a for a, _ in members]
    own16 = _addr16(own)[0] if own else b""
    if own16 not in addrs or len(set(addrs)) != len(addrs) or any(f != family for _, f in members):
        raise ConfigError([f"instance.pool: must list distinct IPv{family} addresses including "
                           f"this instance's source_ipv{family}"])
    return addrs, addrs.index(own16), family


@dataclass(frozen=True)
class ClusterEntry:
    """struct mg_cluster: prefixes (network bytes), backup rank, forwarder range."""

    prefix6: bytes
    prefix4: bytes
    len4: int
    len6: int
    backup_rank: int
    fwd_first: int
    n_fwd: int


def _clusters(config: Config) -> tuple[list[bytes], list[bytes], int]:
    """The VIP-matching section: cluster records (this one first), forwarder records and
    the first backup cluster's index (0 = none); empty when matching is off."""
    c = config.cluster
    if not c.enabled:
        return [], [], 0
    order = {name: i + 1 for i, name in enumerate(c.backup)}
    recs, fwds = [], []

    def rec(prefixes: tuple[str, ...], rank: int, fwd: tuple[str, ...]) -> bytes:
        p4, p6, l4, l6 = bytes(4), bytes(16), 0, 0
        for text in prefixes:
            net = ipaddress.ip_network(text)
            if net.version == 4:
                p4, l4 = net.network_address.packed, net.prefixlen
            else:
                p6, l6 = net.network_address.packed, net.prefixlen
        first = len(fwds)
        for a in fwd:
            a16, fam = _addr16(a)
            fwds.append(FWD.pack(a16, fam))
        return CLUSTER.pack(p6, p4, l4, l6, rank, first, len(fwd))

    recs.append(rec(c.prefixes, 0, ()))
    backup_index = 0
    for i, peer in enumerate(c.peers):
        rank = order.get(peer.name, 0)
        recs.append(rec(peer.prefixes, rank, peer.forwarders))
        if rank == 1:
            backup_index = i + 1
    return recs, fwds, backup_index


def build_tables(
    config: Config,
    down: frozenset[tuple[str, str]] = frozenset(),
    *,
    generation: int = 0,
    own_mac: str = "",
    gateway_mac: str = "",
    inner_mac: str = "",
    engine: str = "c",
) -> bytes:
    """The tables blob for ``config`` with the (vip key, backend key) pairs in ``down``
    marked unhealthy.  Raises :class:`ConfigError` listing every problem (too many VIPs or
    backends, an ``l2`` backend without a MAC); nothing is returned half-built."""
    problems: list[str] = []
    vips = config.vips
    if len(vips) > MAX_VIPS:
        problems.append(f"vip: {len(vips)} VIPs exceed the data path's maximum {MAX_VIPS}")
    n_backends = sum(len(v.backends) for v in vips)
    if n_backends > MAX_BACKENDS:
        problems.append(
            f"vip: {n_backends} (VIP, backend) pairs exceed the data path's maximum {MAX_BACKENDS}"
        )
    for i, v in enumerate(vips):
        if v.encap == "l2":
            for j, b in enumerate(v.backends):
                if not b.mac:
                    problems.append(f"vip[{i}].backend[{j}].mac: required for encap 'l2'")
    macs = {}
    for name, text in (("own_mac", own_mac), ("gateway_mac", gateway_mac), ("inner_mac", inner_mac)):
        try:
            raw = _mac(text)
            if len(raw) != 6:
                raise ValueError
            macs[name] = raw
        except ValueError:
            problems.append(f"{name}: {text!r} is not a MAC address")
    if problems:
        raise ConfigError(problems)
    if not inner_mac:
        macs["inner_mac"] = DEFAULT_INNER_MAC

    n_vips = len(vips)
    index_bits = _bits_for(n_vips)
    idmap_bits = _bits_for(n_backends)
    vip_off = _align8(HDR.size)
    backend_off = _align8(vip_off + VIP.size * n_vips)
    index_off = _align8(backend_off + BACKEND.size * n_backends)
    idmap_off = _align8(index_off + 4 * (1 << index_bits))
    pool_off = _align8(idmap_off + 4 * (1 << idmap_bits))
    pool, pool_self, pool_family = _pool(config)
    cluster_recs, fwd_recs, backup_cluster = _clusters(config)
    cluster_off = _align8(pool_off + 16 * len(pool))
    fwd_off = _align8(cluster_off + CLUSTER.size * len(cluster_recs))
    table_off = _align8(fwd_off + FWD.size * len(fwd_recs))

    # The whole blob is allocated once and each Maglev table written into it in place: its
    # size is known from the config (tables_size()).  Before, a big table was copied five
    # times (join, put, hash input, bytes(), header + body), each copy holding the GIL.
    total = table_off + _tables_bytes(vips) + _quic_bytes(vips)
    out = bytearray(total)
    vip_args: list[list[Any]] = []
    quic: list[list[tuple[int, int]]] = []
    backend_recs: list[bytes] = []
    index = [0] * (1 << index_bits)
    mask = (1 << index_bits) - 1
    idmap = [0] * (1 << idmap_bits)
    idmask = (1 << idmap_bits) - 1
    first = 0
    for vi, v in enumerate(vips):
        addr, fam = _addr16(v.address)
        proto = PROTO_CODES[v.protocol]
        pbe = port_be(v.port)
        vkey = v.key  # a property that parses the address: once per VIP
        healthy = []
        global_of = {}
        bkeys = [b.key for b in v.backends]
        for j, (b, bkey, bid) in enumerate(zip(v.backends, bkeys, _backend_ids(vkey, bkeys), strict=True)):
            baddr, bfam = _addr16(b.address)
            ok = (vkey, bkey) not in down
            flags = BACKEND_F_PRESENT | (BACKEND_F_HEALTHY if ok else 0)
            backend_recs.append(BACKEND.pack(baddr, _mac(b.mac), bfam, flags, bid, vi, b.weight))
            k = bid & idmask
            while idmap[k]:
                k = (k + 1) & idmask
            idmap[k] = first + j + 1
            global_of[bkey] = first + j
            if ok:
                healthy.append((bkey, b.weight))
        t = build_table(healthy, v.table_size, engine)
        _remap_into(out, table_off, t.entries, [global_of[name] for name in t.names])
        n_entries = len(t.entries)
        del t  # its entries (4 bytes a slot) are in the blob now
        vip_args.append(
            [addr, pbe, proto, fam, ENCAP_CODES[v.encap], vip_flags(v), v.vxlan_port,
             v.vxlan_vni, v.table_size, table_off, first, len(v.backends),
             len(healthy), v.priority, bytes(3)]
        )
        quic.append(quic_sids(v, first))
        table_off += _align8(4 * n_entries)
        first += len(v.backends)
        i = vip_hash(addr, pbe, proto) >> (32 - index_bits)
        while index[i]:
            i = (i + 1) & mask
        index[i] = vi + 1

    # QUIC server-ID arrays (mg_quic.h) after the Maglev tables, one per QUIC VIP.
    quic_off = table_off
    quic_recs: list[bytes] = []
    vip_recs: list[bytes] = []
    for v, args, sids in zip(vips, vip_args, quic, strict=True):
        if v.quic.enabled:
            args += [quic_off, len(sids), v.quic.server_id_offset, v.quic.server_id_length]
            rec = b"".join(QUIC_SID.pack(sid, b, 0) for sid, b in sids)
            quic_recs.append(rec)
            quic_off += len(rec)
        else:
            args += [0, 0, 0, 0]
        vip_recs.append(VIP.pack(*args))
    tables_end, table_off = table_off, quic_off
    if table_off != total:  # pragma: no cover -- tables_size() and this layout disagree
        raise AssertionError(f"tables blob layout: {table_off} bytes written, {total} allocated")

    def put(off: int, data: bytes) -> None:
        out[off : off + len(data)] = data
    put(vip_off, b"".join(vip_recs))
    put(backend_off, b"".join(backend_recs))
    put(index_off, struct.pack(f"={len(index)}I", *index))
    put(idmap_off, struct.pack(f"={len(idmap)}I", *idmap))
    put(pool_off, b"".join(pool))
    put(cluster_off, b"".join(cluster_recs))
    put(fwd_off, b"".join(fwd_recs))
    put(tables_end, b"".join(quic_recs))

    inst = config.instance
    k0, k1 = config.flow_hash_key
    src4 = ipaddress.IPv4Address(inst.source_ipv4).packed if inst.source_ipv4 else bytes(4)
    src6 = ipaddress.IPv6Address(inst.source_ipv6).packed if inst.source_ipv6 else bytes(16)
    total = table_off

    def header(gen: int) -> bytes:
        return HDR.pack(
            MAGIC, VERSION, HDR.size, total, gen, k0, k1, n_vips, n_backends, vip_off,
            backend_off, index_off, index_bits, config.conntrack.tcp_timeout_s * 1000,
            config.conntrack.udp_timeout_s * 1000, src4, src6, int(bool(inst.source_ipv4)),
            int(bool(inst.source_ipv6)), inst.mtu, macs["own_mac"], macs["gateway_mac"],
            macs["inner_mac"], 0, idmap_off, idmap_bits, pool_off, len(pool), pool_self,
            pool_family, len(cluster_recs), backup_cluster, 0,
            cluster_off if cluster_recs else 0, fwd_off if fwd_recs else 0, len(fwd_recs), bytes(14),
        )

    if not generation:
        h = hashlib.sha256(header(0))
        h.update(memoryview(out)[HDR.size :])  # (hashlib releases the GIL on big data)
        generation = int.from_bytes(h.digest()[:8], "little") | 1
    out[: HDR.size] = header(generation)
    return bytes(out)


def _tables_bytes(vips: Any) -> int:
    return sum(_align8(4 * v.table_size) for v in vips)


def _quic_bytes(vips: Any) -> int:
    return sum(QUIC_SID.size * sum(1 for b in v.backends if b.quic_server_id) for v in vips if v.quic.enabled)


def tables_size(config: Config) -> int:
    """The size in bytes of ``build_tables(config)``'s blob, from the config alone (no table
    is built): what a change needs of the run's tables area, known before any work."""
    vips = config.vips
    n_backends = sum(len(v.backends) for v in vips)
    vip_off = _align8(HDR.size)
    backend_off = _align8(vip_off + VIP.size * len(vips))
    index_off = _align8(backend_off + BACKEND.size * n_backends)
    idmap_off = _align8(index_off + 4 * (1 << _bits_for(len(vips))))
    pool_off = _align8(idmap_off + 4 * (1 << _bits_for(n_backends)))
    pool, _, _ = _pool(config)
    cluster_recs, fwd_recs, _ = _clusters(config)
    cluster_off = _align8(pool_off + 16 * len(pool))
    fwd_off = _align8(cluster_off + CLUSTER.size * len(cluster_recs))
    table_off = _align8(fwd_off + FWD.size * len(fwd_recs))
    return table_off + _tables_bytes(vips) + _quic_bytes(vips)


def quic_sids(v: Any, first: int) -> list[tuple[int, int]]:
    """A QUIC VIP's (server ID as an integer, global backend index) pairs, sorted by ID."""
    if not v.quic.enabled:
        return []
    return sorted((int(b.quic_server_id, 16), first + j) for j, b in enumerate(v.backends) if b.quic_server_id)


def quic_server_id(data: bytes, p: Any, sid_off: int, sid_len: int) -> int | None:
    """mg_quic_route()'s reading of a UDP packet: the server ID (an integer) of a QUIC
    short-header packet's destination connection ID, or None (long header, too short)."""
    payload = p.l4_off + 8
    end = p.l3_off + p.l3_len
    if end < payload or end - payload < 1 + sid_off + sid_len:
        return None
    if data[payload] & 0x80:
        return None
    return int.from_bytes(data[payload + 1 + sid_off : payload + 1 + sid_off + sid_len], "big")


@dataclass(frozen=True)
class VipEntry:
    addr: bytes  # 16 bytes
    port: int  # host order
    proto: int
    family: int
    encap: int
    flags: int
    vxlan_port: int
    vxlan_vni: int
    table_size: int
    table_off: int
    backend_first: int
    backend_count: int
    n_healthy: int
    priority: int = 0
    quic_off: int = 0
    quic_n: int = 0
    quic_sid_off: int = 0
    quic_sid_len: int = 0  # 0 = not a QUIC VIP

    @property
    def address(self) -> str:
        raw = self.addr[:4] if self.family == 4 else self.addr
        return str(ipaddress.ip_address(raw))


@dataclass(frozen=True)
class BackendEntry:
    addr: bytes
    mac: bytes
    family: int
    flags: int
    id: int
    vip_index: int
    weight: int

    @property
    def address(self) -> str:
        raw = self.addr[:4] if self.family == 4 else self.addr
        return str(ipaddress.ip_address(raw))

    @property
    def healthy(self) -> bool:
        return bool(self.flags & BACKEND_F_HEALTHY) and bool(self.flags & BACKEND_F_PRESENT)


@dataclass(frozen=True)
class TablesView:
    """A parsed tables blob (what :func:`read_tables` returns)."""

    header: dict[str, Any]
    vips: tuple[VipEntry, ...]
    backends: tuple[BackendEntry, ...]
    blob: bytes
    pool: tuple[bytes, ...] = ()  # maglev pool, 16-byte addresses in canonical order
    clusters: tuple[ClusterEntry, ...] = ()  # VIP matching: [0] is this cluster
    forwarders: tuple[tuple[bytes, int], ...] = ()  # (16-byte address, family)

    def cluster_map(self, dst16: bytes, family: int) -> tuple[int, bytes]:
        """mg_cluster_map(): (peer index >= 1, this cluster's address with the same
        suffix) when ``dst16`` lies in a peer cluster's prefix, else (0, b"")."""
        if len(self.clusters) < 2:
            return 0, b""
        own = self.clusters[0]
        n = own.len4 if family == 4 else own.len6
        if not n:
            return 0, b""
        bits = 32 if family == 4 else 128
        alen = bits // 8
        d = int.from_bytes(dst16[:alen], "big")
        mask = ((1 << n) - 1) << (bits - n)
        for i, c in enumerate(self.clusters[1:], 1):
            if not (c.len4 if family == 4 else c.len6):
                continue
            pfx = int.from_bytes(c.prefix4 if family == 4 else c.prefix6, "big")
            if d & mask == pfx:
                mine = int.from_bytes(own.prefix4 if family == 4 else own.prefix6, "big")
                local = ((mine & mask) | (d & ~mask & ((1 << bits) - 1))).to_bytes(alen, "big")
                return i, local + dst16[alen:]
        return 0, b""

    def maglev(self, vip: int) -> tuple[int, ...]:
        v = self.vips[vip]
        return struct.unpack_from(f"={v.table_size}i", self.blob, v.table_off)

    def quic_sids(self, vip: int) -> list[tuple[int, int]]:
        """The (server ID, backend index) pairs of a QUIC VIP, sorted by server ID."""
        v = self.vips[vip]
        return [QUIC_SID.unpack_from(self.blob, v.quic_off + QUIC_SID.size * i)[:2] for i in range(v.quic_n)]

    def quic_route(self, vip: int, data: bytes, p: Any) -> int:
        """mg_quic_route(): the healthy backend the packet's QUIC server ID names, or -1."""
        v = self.vips[vip]
        if not v.quic_sid_len or p.proto != 17 or not p.l4_off:
            return -1
        sid = quic_server_id(data, p, v.quic_sid_off, v.quic_sid_len)
        if sid is None:
            return -1
        for s, b in self.quic_sids(vip):
            if s == sid:
                return b if self.backends[b].healthy else -1
        return -1

    def find_backend(self, bid: int, vip: int) -> int:
        """mg_tables_find_backend(): the index of backend ``bid`` of VIP ``vip`` (< 0: any
        VIP) or -1, by the same probe sequence over the blob's id map."""
        h = self.header
        bits = h["idmap_bits"]
        mask = (1 << bits) - 1
        i = bid & mask
        for _ in range(mask + 1):
            e = struct.unpack_from("=I", self.blob, h["idmap_off"] + 4 * i)[0]
            if e == 0:
                return -1
            be = self.backends[e - 1]
            if be.id == bid and (vip < 0 or be.vip_index == vip):
                return e - 1
            i = (i + 1) & mask
        return -1

    def find_vip(self, addr16: bytes, port: int, proto: int) -> int:
        """Exact (addr, port, proto), then (addr, 0, proto); -1 when none (``port`` host order)."""
        for want in (port, 0) if port else (0,):
            for i, v in enumerate(self.vips):
                if v.addr == addr16 and v.port == want and v.proto == proto:
                    return i
        return -1


_HDR_FIELDS = (
    "magic version hdr_size total_size generation hash_k0 hash_k1 n_vips n_backends vip_off "
    "backend_off index_off index_bits tcp_timeout_ms udp_timeout_ms src4 src6 has_src4 "
    "has_src6 mtu own_mac gateway_mac inner_mac reserved0 idmap_off idmap_bits pool_off n_pool "
    "pool_self pool_family n_clusters backup_cluster reserved1 cluster_off fwd_off n_fwd reserved"
).split()


def _read_pool(h: dict[str, Any], blob: bytes) -> tuple[bytes, ...]:
    """The pool members (16 bytes each), with mg_tables_validate()'s checks."""
    n, off = h["n_pool"], h["pool_off"]
    if n > MAX_POOL or off % 8 or off + 16 * n > len(blob):
        raise PacketError("tables blob: pool size or offset invalid")
    if n == 0:
        if h["pool_self"] or h["pool_family"]:
            raise PacketError("tables blob: pool index or family set without a pool")
        return ()
    fam = h["pool_family"]
    pool = tuple(blob[off + 16 * i : off + 16 * (i + 1)] for i in range(n))
    if fam not in (4, 6) or h["pool_self"] >= n or not h["has_src4" if fam == 4 else "has_src6"]:
        raise PacketError("tables blob: pool family, own index or source address invalid")
    alen = 4 if fam == 4 else 16
    own = h["src4"] if fam == 4 else h["src6"]
    if pool[h["pool_self"]][:alen] != own:
        raise PacketError("tables blob: pool[pool_self] is not this instance's source address")
    if any(a[alen:] != bytes(16 - alen) for a in pool) or any(a >= b for a, b in zip(pool, pool[1:], strict=False)):
        raise PacketError("tables blob: pool addresses not canonical (sorted, distinct)")
    return pool


def _check_quic(i: int, v: VipEntry, blob: bytes) -> None:
    """mg_quic_validate()."""
    bad = PacketError(f"tables blob: VIP {i} QUIC fields invalid")
    if not v.quic_sid_len:
        if v.quic_off or v.quic_n or v.quic_sid_off:
            raise bad
        return
    if (v.proto != 17 or v.quic_sid_len > QUIC_MAX_SID_LEN or v.quic_sid_off + v.quic_sid_len > QUIC_MAX_CID_LEN
            or v.quic_n > v.backend_count or v.quic_off % 8 or v.quic_off + QUIC_SID.size * v.quic_n > len(blob)):
        raise bad
    prev = -1
    for k in range(v.quic_n):
        sid, b, _ = QUIC_SID.unpack_from(blob, v.quic_off + QUIC_SID.size * k)
        if sid >> (8 * v.quic_sid_len) or sid <= prev or not v.backend_first <= b < v.backend_first + v.backend_count:
            raise bad
        prev = sid


def _clean(pfx: bytes, n: int) -> bool:
    v = int.from_bytes(pfx, "big")
    return v & ((1 << (8 * len(pfx) - n)) - 1) == 0


def _read_clusters(h: dict[str, Any], blob: bytes) -> tuple[tuple[ClusterEntry, ...], tuple[tuple[bytes, int], ...]]:
    """The VIP-matching section, with clusters_ok()'s checks (mg_tables.c)."""
    n, nf = h["n_clusters"], h["n_fwd"]
    bad = PacketError("tables blob: VIP-matching clusters invalid")
    if n == 0:
        if h["backup_cluster"] or nf:
            raise bad
        return (), ()
    co, fo = h["cluster_off"], h["fwd_off"]
    if (n > MAX_CLUSTERS or nf > MAX_FWD or co % 8 or fo % 8 or co + CLUSTER.size * n > len(blob)
            or fo + FWD.size * nf > len(blob) or h["backup_cluster"] >= n):
        raise bad
    cl = tuple(ClusterEntry(*CLUSTER.unpack_from(blob, co + i * CLUSTER.size)) for i in range(n))
    fw = tuple(FWD.unpack_from(blob, fo + i * FWD.size) for i in range(nf))
    own = cl[0]
    if (not own.len4 and not own.len6) or own.n_fwd or own.backup_rank:
        raise bad
    for i, c in enumerate(cl):
        if c.len4 > 31 or c.len6 > 127 or not _clean(c.prefix4, c.len4) or not _clean(c.prefix6, c.len6):
            raise bad
        if i and ((c.len4 and c.len4 != own.len4) or (c.len6 and c.len6 != own.len6) or not (c.len4 or c.len6)):
            raise bad
        if c.fwd_first > nf or c.n_fwd > nf - c.fwd_first:
            raise bad
    b = h["backup_cluster"]
    if b and (cl[b].n_fwd == 0 or cl[b].backup_rank != 1):
        raise bad
    for _, fam in fw:
        if fam not in (4, 6) or not h["has_src4" if fam == 4 else "has_src6"]:
            raise bad
    return cl, fw


def _header_and_vips(blob: bytes) -> tuple[dict[str, int], list[VipEntry]]:
    """The header and VIP entries of a blob, checked (the first part of read_tables)."""
    if len(blob) < HDR.size:
        raise PacketError(f"tables blob: {len(blob)} bytes is shorter than its header")
    h = dict(zip(_HDR_FIELDS, HDR.unpack_from(blob, 0), strict=True))
    if h["magic"] != MAGIC or h["version"] != VERSION or h["hdr_size"] != HDR.size:
        raise PacketError("tables blob: bad magic, version or header size")
    if h["total_size"] != len(blob):
        raise PacketError(f"tables blob: header says {h['total_size']} bytes, got {len(blob)}")
    if h["n_vips"] > MAX_VIPS or h["n_backends"] > MAX_BACKENDS:
        raise PacketError("tables blob: too many VIPs or backends")
    if h["mtu"] < 576:
        raise PacketError(f"tables blob: MTU {h['mtu']} is below 576")
    if h["vip_off"] + VIP.size * h["n_vips"] > len(blob) or (
        h["backend_off"] + BACKEND.size * h["n_backends"] > len(blob)
    ):
        raise PacketError("tables blob: VIP or backend array beyond the end")
    vips = []
    for i in range(h["n_vips"]):
        f = VIP.unpack_from(blob, h["vip_off"] + i * VIP.size)
        port = int.from_bytes(struct.pack("=H", f[1]), "big")
        v = VipEntry(f[0], port, *f[2:14], *f[15:19])
        if v.flags & ~VIP_F_KNOWN or v.priority > MAX_PRIORITY or (
            v.flags & VIP_F_HASH_SRC_IP and v.flags & VIP_F_HASH_DST_PORT
        ):
            raise PacketError(f"tables blob: VIP {i} flags or priority invalid")
        if v.table_off + 4 * v.table_size > len(blob) or v.backend_first + v.backend_count > h["n_backends"]:
            raise PacketError(f"tables blob: VIP {i} table or backend range beyond the end")
        _check_quic(i, v, blob)
        vips.append(v)
    return h, vips


def read_vip_keys(blob: bytes) -> list[str]:
    """The ``ADDR:PORT/PROTO`` of each VIP of a blob, in table order: the header and VIP
    entries checked, not the Maglev tables.  Steering needs only these at every change;
    ``read_tables`` also walks every table entry (2 s for two VIPs of 16777213 slots at
    load 14, which cost steering its heartbeats)."""
    return [vip_key(v) for v in _header_and_vips(bytes(blob))[1]]


def read_tables(blob: bytes) -> TablesView:
    """Parse and validate a blob (the same checks as ``mg_tables_validate``, in Python).
    Raises :class:`PacketError` with the first problem found."""
    blob = bytes(blob)
    h, vips = _header_and_vips(blob)
    backends = tuple(
        BackendEntry(*BACKEND.unpack_from(blob, h["backend_off"] + i * BACKEND.size))
        for i in range(h["n_backends"])
    )
    bits = h["index_bits"]
    if not 1 <= bits <= 16 or (1 << bits) < h["n_vips"] or h["index_off"] + (4 << bits) > len(blob):
        raise PacketError("tables blob: VIP index size or offset invalid")
    index = struct.unpack_from(f"={1 << bits}I", blob, h["index_off"])
    if any(e > h["n_vips"] for e in index) or 0 not in index:
        raise PacketError("tables blob: VIP index entries invalid")
    ibits = h["idmap_bits"]
    if not 1 <= ibits <= 17 or (1 << ibits) <= h["n_backends"] or h["idmap_off"] + (4 << ibits) > len(blob):
        raise PacketError("tables blob: backend id map size or offset invalid")
    if any(e > h["n_backends"] for e in struct.unpack_from(f"={1 << ibits}I", blob, h["idmap_off"])):
        raise PacketError("tables blob: backend id map entries invalid")
    pool = _read_pool(h, blob)
    clusters, fwds = _read_clusters(h, blob)
    view = TablesView(h, tuple(vips), backends, blob, pool, clusters, fwds)
    for i, v in enumerate(vips):
        lo, hi = v.backend_first, v.backend_first + v.backend_count
        used = set(view.maglev(i))
        used.discard(-1)
        if used and (min(used) < lo or max(used) >= hi):
            raise PacketError(f"tables blob: VIP {i} Maglev entry outside its backends")
    for i, b in enumerate(backends):
        if b.family not in (4, 6) or b.vip_index >= h["n_vips"]:
            raise PacketError(f"tables blob: backend {i} family or VIP index invalid")
        if view.find_backend(b.id, b.vip_index) != i:
            raise PacketError(f"tables blob: backend {i} is not found by its id")
    return view


# ---------------------------------------------------------------------- summary view

_summary_cache: dict[tuple[str, int], Any] = {}


def vip_key(v: Any) -> str:
    """``ADDR:PORT/PROTO`` (IPv6 in brackets) of a VIP entry."""
    addr = v.address
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{v.port}/{PROTO_NAMES.get(v.proto, str(v.proto))}"


def tables_info(region: Any) -> dict[str, Any] | None:
    """The tables ``region`` publishes now, parsed and summarised (VIPs, their backends,
    weights, health and Maglev entries per backend), cached per region and generation;
    None before the first publication."""
    gen, blob = region.tables.current()
    if gen == 0:
        return None
    ck = (region.name, gen)
    hit = _summary_cache.get(ck)
    if hit is not None:
        return hit
    view = read_tables(blob)
    vips = []
    for i, v in enumerate(view.vips):
        entries = Counter(view.maglev(i))
        entries.pop(-1, None)
        backends = []
        for b in range(v.backend_first, v.backend_first + v.backend_count):
            be = view.backends[b]
            backends.append({"index": b, "address": be.address, "weight": be.weight,
                             "healthy": be.healthy, "entries": entries.get(b, 0)})
        live = [b["entries"] for b in backends if b["healthy"] and b["weight"] > 0]
        vips.append({
            "index": i, "vip": vip_key(v), "encap": ENCAP_NAMES.get(v.encap, str(v.encap)),
            "priority": v.priority,
            "table_size": v.table_size, "backends": backends,
            "entries_min": min(live) if live else 0, "entries_max": max(live) if live else 0,
        })
    info = {"generation": gen, "blob_generation": view.header["generation"], "vips": vips,
            "n_backends": len(view.backends), "view": view}
    if len(_summary_cache) > 8:
        _summary_cache.clear()
    _summary_cache[ck] = info
    return info
