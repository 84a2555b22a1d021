"""``maglev whereis``: which backend a flow goes to, and why.

The answer is computed by the data path's own C code, never by a re-implementation that
could drift from it: a synthetic first packet of the flow (TCP SYN, or a UDP datagram) is
built, hashed by steering's ``mg_steer_hash`` (which worker owns the flow: the SipHash-1-3
flow hash, keyed by the deployment's secret, through the flow -> worker map a run with
that many workers and the default CPU placement uses here, maglev/actors/dispatch.py) and
run through a private instance of the burst kernel ``mg_dp_burst`` over the same tables
blob (VIP match, Maglev lookup ``table[hash % M]``, encapsulation).  The slot index is
``hash % M``; the result cross-checks that the kernel's backend is the one in that slot.

Two sources of tables:

* a config file (offline, ``--config``): the blob is built from it exactly as the config
  manager would with every backend healthy;
* a running instance (``--control``): the config manager answers with the tables blob
  *now published* (so health and live changes count) and the generation.

What it cannot see: the connection table of the worker that owns the flow lives in that
worker's private memory, so an established flow whose backend changed since it started
(it keeps its old backend through conntrack, paper 3.3) is answered with where a *new*
flow goes.  ``maglev ctl trace --vip ... --src ...`` shows the live verdict, conntrack hit
or miss included, for the next packets of the flow.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from maglev.errors import MaglevError

__all__ = ["FlowSpec", "WhereisError", "parse_cid", "parse_flow", "whereis_blob", "whereis_config"]

PROTOS = {"tcp": 6, "udp": 17}


class WhereisError(MaglevError, ValueError):
    """A flow that cannot be parsed or answered."""


class FlowSpec:
    def __init__(self, src: Any, sport: int, dst: Any, dport: int, proto: str):
        self.src, self.sport, self.dst, self.dport, self.proto = src, sport, dst, dport, proto

    def __str__(self) -> str:
        def hp(a: Any, p: int) -> str:
            return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"

        return f"{hp(self.src, self.sport)} -> {hp(self.dst, self.dport)}/{self.proto}"


def _host_port(text: str, what: str) -> tuple[Any, int]:
    s = text.strip()
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise WhereisError(f"{what} {text!r}: write an IPv6 address as [ADDR]:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = s.rpartition(":")
        if not sep or ":" in host:
            raise WhereisError(f"{what} {text!r}: expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise WhereisError(f"{what} {text!r}: {host!r} is not an IP address") from None
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise WhereisError(f"{what} {text!r}: port must be 0..65535")
    return ip, int(port_s)


def parse_flow(src: str, dst: str) -> FlowSpec:
    """``SRC:PORT`` and ``DST:PORT/PROTO`` (proto tcp or udp; default tcp)."""
    proto = "tcp"
    if "/" in dst:
        dst, _, proto = dst.rpartition("/")
        proto = proto.lower()
        if proto not in PROTOS:
            raise WhereisError(f"protocol {proto!r}: tcp or udp")
    s_ip, s_port = _host_port(src, "source")
    d_ip, d_port = _host_port(dst, "destination")
    if s_ip.version != d_ip.version:
        raise WhereisError("source and destination must both be IPv4 or both IPv6")
    return FlowSpec(s_ip, s_port, d_ip, d_port, proto)


def parse_cid(text: str) -> bytes:
    """A QUIC destination connection ID in hex (``0a01b2...``, 1-20 bytes; ':' allowed)."""
    raw = text.replace(":", "").strip()
    try:
        cid = bytes.fromhex(raw)
    except ValueError:
        raise WhereisError(f"connection ID {text!r}: not hex bytes") from None
    if not 1 <= len(cid) <= 20:
        raise WhereisError(f"connection ID {text!r}: {len(cid)} bytes; QUIC allows 1-20")
    return cid


def _packet(f: FlowSpec, quic_cid: bytes | None = None) -> bytes:
    from maglev.datapath import frames as P

    src, dst = str(f.src), str(f.dst)
    if f.proto == "tcp":
        l4 = P.tcp(f.sport, f.dport, b"", src=src, dst=dst, flags=0x02)  # SYN: a new flow
    elif quic_cid is not None:  # a QUIC 1-RTT (short-header) packet with this DCID
        l4 = P.udp(f.sport, f.dport, b"\x40" + quic_cid + b"\0" * 20, src=src, dst=dst)
    else:
        l4 = P.udp(f.sport, f.dport, b"\0" * 8, src=src, dst=dst)
    proto = PROTOS[f.proto]
    ip = P.ipv4(src, dst, proto, l4) if f.src.version == 4 else P.ipv6(src, dst, proto, l4)
    return P.eth(ip)


def whereis_blob(blob: bytes, flow: FlowSpec, *, workers: int = 0, generation: int | None = None,
                 names: dict[tuple[str, str], str] | None = None,
                 pools: dict[tuple[str, str], str] | None = None,
                 quic_cid: bytes | None = None,
                 cluster_names: list[str] | None = None) -> dict[str, Any]:
    """Answer for ``flow`` over a tables blob.  ``workers`` > 0 adds the owning worker;
    ``names`` maps (vip key, backend address) to the configured backend name, ``pools`` to
    the pool path of a pooled VIP's backend (maglev/pools.py); ``quic_cid`` makes the
    packet a QUIC short-header packet with that destination connection ID;
    ``cluster_names`` names the blob's clusters (this one first) for VIP matching."""
    if quic_cid is not None and flow.proto != "udp":
        raise WhereisError("a QUIC connection ID needs a UDP flow (DST:PORT/udp)")
    from maglev.datapath import DataPath
    from maglev.datapath.engine import Packet, verdict_name
    from maglev.datapath.tables import (
        ENCAP_NAMES,
        VIP_F_NO_CONNTRACK,
        hash_inputs,
        read_tables,
        vip_key,
    )
    from maglev.native import ffi, lib

    view = read_tables(blob)
    k0, k1 = view.header["hash_k0"], view.header["hash_k1"]
    pkt = _packet(flow, quic_cid)
    h = ffi.new("uint64_t *")
    fl = ffi.new("uint16_t *")
    w = int(lib.mg_steer_hash(pkt, len(pkt), k0, k1, max(workers, 1), h, fl))
    if w < 0:
        raise WhereisError(f"{flow}: the parser rejects the synthetic packet")
    if workers > 1:
        from maglev.actors.dispatch import default_map

        w = default_map(workers).worker_of(int(h[0]))
    out = DataPath(blob, engine="c").process([Packet(0, pkt)], 1)[0]
    result: dict[str, Any] = {
        "flow": str(flow),
        "flow_hash": f"{int(h[0]):016x}",
        "generation": generation if generation is not None else view.header["generation"],
        "verdict": verdict_name(out.verdict),
    }
    if workers > 0:
        result["worker"] = w
        result["workers"] = workers
    addr16 = flow.dst.packed.ljust(16, b"\0")
    vi = view.find_vip(addr16, flow.dport, PROTOS[flow.proto])
    cname = _cluster_namer(view, cluster_names)
    rule = "VIP (exact address, port and protocol)"
    if vi >= 0 and view.vips[vi].port == 0 and flow.dport:
        rule = "VIP serving every port (port 0)"
    if vi < 0:
        peer, local = view.cluster_map(addr16, flow.dst.version)
        if peer:
            vi = view.find_vip(local, flow.dport, PROTOS[flow.proto])
            own = ipaddress.ip_address(local[: 4 if flow.dst.version == 4 else 16])
            if vi < 0:
                result["rule"] = f"VIP matching: {flow.dst} is cluster {cname(peer)}'s address; {own} has no VIP"
                result["why"] = (f"{flow.dst} lies in cluster {cname(peer)}'s prefix, but this cluster's address "
                                 f"with the same suffix ({own}) serves no VIP on this port and protocol (no_vip)")
                return result
            rule = (f"VIP matching (paper 4.2): {flow.dst} is cluster {cname(peer)}'s address with the "
                    f"suffix of this cluster's {own}")
    if vi < 0:
        result["why"] = "no VIP matches this destination, port and protocol: the packet is dropped (no_vip)"
        return result
    result["rule"] = rule
    v = view.vips[vi]
    key = vip_key(v)
    sel = _selection_hash(blob, vi, pkt, k0, k1)
    slot = sel % v.table_size
    entry = view.maglev(vi)[slot]
    result.update({"vip": key, "encap": ENCAP_NAMES.get(v.encap, str(v.encap)), "table_size": v.table_size,
                   "slot": slot, "slot_backend_index": entry, "hash_inputs": hash_inputs(v.flags, v.proto),
                   "conntrack": not v.flags & VIP_F_NO_CONNTRACK, "priority": v.priority,
                   "overload": _overload_words(v.priority, [x.priority for x in view.vips])})
    if sel != int(h[0]):
        result["selection_hash"] = f"{sel:016x}"
    if out.backend_index >= 0:
        be = view.backends[out.backend_index]
        result["backend"] = be.address
        name = (names or {}).get((key, be.address))
        if name and name != be.address:
            result["backend_name"] = name
        if (pool := (pools or {}).get((key, be.address))) is not None:
            result["pool"] = pool
        result["backend_index"] = out.backend_index
    if v.quic_sid_len:
        _quic_rule(view, vi, v, pkt, quic_cid, result, names or {}, key)
    backup = view.header["backup_cluster"]
    if result.get("quic", {}).get("routed"):
        q = result["quic"]
        result["why"] = (f"QUIC short header: server ID {q['server_id']} (connection ID bytes "
                         f"{v.quic_sid_off}..{v.quic_sid_off + v.quic_sid_len - 1}) names backend "
                         f"{result.get('backend')}: routed by connection ID whatever the addresses and ports "
                         "(connection migration); no connection table")
    elif entry < 0 and out.backend_index < 0 and backup and verdict_name(out.verdict) == "forward":
        c = view.clusters[backup]
        fwd = view.forwarders[c.fwd_first + int(_selection_hash(blob, vi, pkt, k0, k1)) % c.n_fwd]
        fa = ipaddress.ip_address(fwd[0][: 4 if fwd[1] == 4 else 16])
        result["backup_cluster"] = cname(backup)
        result["backup_forwarder"] = str(fa)
        result["rule"] = rule + f"; no healthy backend: backup cluster {cname(backup)}"
        result["why"] = (f"slot {slot} of {key}'s table is empty (every backend is down or drained): the packet "
                         f"goes in GRE to backup cluster {cname(backup)}'s forwarder {fa}, which serves the "
                         f"same suffix")
    elif entry < 0:
        result["why"] = f"slot {slot} of {key}'s table is empty: every backend is down or drained"
    elif entry == out.backend_index:
        ct = ("an established flow keeps the backend in its worker's connection table"
              if result["conntrack"] else "the VIP has no connection table: every packet is hashed")
        result["why"] = (f"new flow: Maglev table slot {slot} = hash({result['hash_inputs'].split(';')[0]}) "
                         f"% {v.table_size} of {key} holds backend {result.get('backend')}; {ct}")
    else:
        result["why"] = (f"the data path chose backend index {out.backend_index}, slot {slot} holds "
                         f"{entry} (fragment or ICMP handling)")
    return result


def _quic_rule(view: Any, vi: int, v: Any, pkt: bytes, quic_cid: bytes | None, result: dict[str, Any],
               names: dict[tuple[str, str], str], key: str) -> None:
    """``result["quic"]``: the VIP's QUIC rule, and for a given connection ID what it decided."""
    from maglev.datapath.ref_parse import parse

    ids = {f"{sid:0{2 * v.quic_sid_len}x}": view.backends[b].address for sid, b in view.quic_sids(vi)}
    q: dict[str, Any] = {
        "rule": (f"short-header packets whose destination connection ID holds a known server ID in bytes "
                 f"{v.quic_sid_off}..{v.quic_sid_off + v.quic_sid_len - 1} go to that server; Initial "
                 "(long-header) packets, unknown IDs and unhealthy servers go by hashing"),
        "server_ids": ids,
        "routed": False,
    }
    if quic_cid is None:
        q["packet"] = "not a QUIC short header (give --quic-cid to ask about one): hashed"
    else:
        sid = quic_cid[v.quic_sid_off:v.quic_sid_off + v.quic_sid_len]
        if len(sid) < v.quic_sid_len:
            q["packet"] = "the connection ID is shorter than the server ID's bytes: hashed"
        else:
            q["server_id"] = sid.hex()
            _, p = parse(pkt)
            b = view.quic_route(vi, pkt, p)
            if b >= 0:
                q["routed"] = True
                q["packet"] = f"server ID {sid.hex()} -> {view.backends[b].address}"
            elif sid.hex() in ids:
                q["packet"] = f"server ID {sid.hex()} is {ids[sid.hex()]}, which is unhealthy: hashed"
            else:
                q["packet"] = f"server ID {sid.hex()} is not one of this VIP's: hashed"
    result["quic"] = q


def _cluster_namer(view: Any, names: list[str] | None) -> Any:
    """Index -> the cluster's name (or its prefixes when names are unknown)."""
    def name(i: int) -> str:
        if names and i < len(names):
            return names[i]
        c = view.clusters[i]
        parts = []
        if c.len4:
            parts.append(f"{ipaddress.ip_address(c.prefix4)}/{c.len4}")
        if c.len6:
            parts.append(f"{ipaddress.ip_address(c.prefix6)}/{c.len6}")
        return "#" + str(i) + " (" + ", ".join(parts) + ")"
    return name


def _overload_words(prio: int, priorities: list[int]) -> str:
    """What steering does with the VIP's packets when its worker's rx ring fills (mg_shed.h)."""
    from maglev.datapath.ref_shed import HIGH_WATER_PCT

    hi = max(priorities)
    if min(priorities) == hi:
        return "every VIP has this priority: nothing is shed, a full rx ring holds packets back"
    if prio >= hi:
        return "highest priority: never shed, a full rx ring holds packets back"
    at = HIGH_WATER_PCT + (100 - HIGH_WATER_PCT) * prio / hi
    return f"shed once its worker's rx ring is {at:.0f}% full (priority {prio} of {hi})"


def _selection_hash(blob: bytes, vip: int, pkt: bytes, k0: int, k1: int) -> int:
    """The hash the burst kernel selects with: the C parser's flow key of ``pkt``, masked
    by the VIP's hashing options (mg_tables_select_key), SipHash-1-3 under the secret."""
    from maglev.native import ffi, lib

    parsed = ffi.new("struct mg_parsed *")
    if lib.mg_parse(pkt, len(pkt), parsed) != 0:
        raise WhereisError("the parser rejects the synthetic packet")
    buf = ffi.new("uint64_t[]", (len(blob) + 7) // 8)
    ffi.memmove(buf, blob, len(blob))
    key = ffi.new("struct mg_flow_key *", parsed.key)
    if lib.mg_tables_select_key(buf, vip, key) != 0:
        raise WhereisError(f"VIP index {vip} is not in the tables")
    raw = bytes(ffi.buffer(key, ffi.sizeof("struct mg_flow_key")))
    return int(lib.mg_siphash13(k0, k1, raw, len(raw)))


def whereis_config(config: Any, flow: FlowSpec, workers: int = 0, quic_cid: bytes | None = None) -> dict[str, Any]:
    """Offline: tables built from ``config`` with every backend up."""
    from maglev.datapath.tables import build_tables

    blob = build_tables(config)
    names = {(v.key, str(ipaddress.ip_address(b.address))): b.key for v in config.vips for b in v.backends}
    from maglev.pools import pool_paths

    r = whereis_blob(blob, flow, workers=workers, names=names, pools=pool_paths(config), quic_cid=quic_cid,
                     cluster_names=cluster_names(config))
    r["source"] = "config (every backend assumed healthy)"
    return r


def cluster_names(config: Any) -> list[str]:
    """The names of a config's clusters in the tables' order (this one, then its peers)."""
    c = config.cluster
    return [c.name, *(p.name for p in c.peers)] if c.enabled else []
