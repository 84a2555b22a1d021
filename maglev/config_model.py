"""The configuration's data model that other modules build on without the parser: health
checks, backends, pools, QUIC settings, VIPs and the instance (docs/config.md).

Split from maglev/config.py (the parser and writer) so that modules the parser calls --
maglev/config_pools.py, maglev/pools.py -- can use these types without importing the parser
back (tests/layout/test_imports.py forbids the circle).  ``maglev.config`` re-exports every
name here, so ``from maglev.config import Vip`` keeps working.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from maglev.hashing import DEFAULT_TABLE_SIZE

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Parsing an address costs ~20 us and a 1000-backend config parses each one several times
# per validation; address objects are immutable, so parsed ones are shared (control-plane
# latency: docs/benchmarks.md, "Control plane").  Invalid strings raise and are not cached.
_ip_address = functools.lru_cache(maxsize=1 << 16)(ipaddress.ip_address)
# The packet (flow) hash key.  Every instance of a deployment must use the same secret
# (ECMP may move a flow between instances) and clients must not know it.  This default is
# public, so it is fine for a lab and wrong for production: set [instance].flow_hash_secret.
DEFAULT_FLOW_HASH_SECRET = "6d61676c65762d64656661756c742d31"  # "maglev-default-1"


@dataclass(frozen=True)
class HealthCheck:
    type: str = "none"  # none | tcp | http | udp
    port: int = 0  # 0 = the VIP's port
    path: str = "/"  # http only
    expect_status: int = 200  # http only
    send: str = ""  # udp only: payload to send (UTF-8)
    expect: str = ""  # udp only: a reply must start with this (empty = any reply)
    interval_ms: int = 1000
    timeout_ms: int = 500
    rise: int = 2
    fall: int = 3
    query: str = "."  # dns only: the name asked for (type A); any NOERROR answer is up
    # tcp only: probe the way clients reach the backend -- a TCP handshake with the VIP,
    # encapsulated like the data path's packets (maglev/health/tunnel.py).
    through_tunnel: bool = False


@dataclass(frozen=True)
class Backend:
    address: str
    weight: int = 1
    name: str = ""  # hashed for the Maglev table; defaults to the canonical address
    mac: str = ""  # next-hop MAC for encap = "l2" and inner destination MAC for "vxlan"
    # QUIC VIPs: the server ID (hex, quic.server_id_length bytes) this backend puts in the
    # connection IDs it issues; "" = none (reached by hashing only).  docs/datapath.md.
    quic_server_id: str = ""

    @property
    def key(self) -> str:
        return self.name or self.address

    @property
    def ip(self) -> IPAddress:
        return _ip_address(self.address)


@dataclass(frozen=True)
class PoolRef:
    """A pool as a member of a VIP or of another pool, with its weight there."""

    name: str
    weight: int = 1


@dataclass(frozen=True)
class Pool:
    """``[[pool]]``: backends and other pools under one health check (maglev/pools.py)."""

    name: str
    health: HealthCheck = field(default_factory=HealthCheck)
    backends: tuple[Backend, ...] = ()
    pools: tuple[PoolRef, ...] = ()
    backup: str = ""  # a pool that takes over while this one's healthy share is low
    backup_below_percent: int = 50  # the backup serves while healthy weight < this % of the pool's


@dataclass(frozen=True)
class Leaf:
    """Where a pooled VIP's backend sits: derived, never written to a file."""

    backend: str  # the Backend's key (name or address), as in ``Vip.backends``
    path: tuple[str, ...]  # pool names from the VIP down to the backend's own pool
    weight: int  # its weight in that pool
    health: HealthCheck  # that pool's check
    backup: bool = False  # reached through a backup edge: idle while the primary is healthy


@dataclass(frozen=True)
class Quic:
    """``[vip.quic]``: route QUIC short-header packets by the server ID in their destination
    connection ID (the QUIC-LB draft's plaintext scheme).  server_id_length 0 = off."""

    server_id_offset: int = 1  # byte offset of the server ID in the connection ID
    server_id_length: int = 0  # bytes, 1..8
    cid_length: int = 8  # length of the connection IDs the servers issue, 1..20

    @property
    def enabled(self) -> bool:
        return self.server_id_length > 0


@dataclass(frozen=True)
class Vip:
    address: str
    port: int = 0  # 0 = every port
    protocol: str = "tcp"
    encap: str = "gre"
    table_size: int = DEFAULT_TABLE_SIZE
    allow_fragments: bool = True
    vxlan_vni: int = 1
    vxlan_port: int = 4789
    health: HealthCheck = field(default_factory=HealthCheck)
    backends: tuple[Backend, ...] = ()
    # Per-VIP hashing options (docs/datapath.md "Per-VIP hashing").
    hash: str = "5tuple"  # one of HASH_MODES
    udp_ignore_src_port: bool = False
    conntrack: bool = True
    # Nested pools (docs/config.md "Pools"): the VIP's pools with their weights.  When set,
    # ``backends`` is *derived*: the tree's leaf backends with effective weights (every
    # backend up, backup pools idle), and ``leaves`` says where each one sits.
    pools: tuple[PoolRef, ...] = ()
    leaves: tuple[Leaf, ...] = ()
    quic: Quic = field(default_factory=Quic)
    # Overload shedding (docs/config.md "priority"): 0..MAX_VIP_PRIORITY, higher kept longer.
    priority: int = 0

    @property
    def key(self) -> str:
        """``address:port/protocol`` (IPv6 in brackets): how operators name a VIP."""
        ip = _ip_address(self.address)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{host}:{self.port}/{self.protocol}"

    @property
    def ip(self) -> IPAddress:
        return _ip_address(self.address)


@dataclass(frozen=True)
class Instance:
    name: str = "mg1"
    source_ipv4: str = ""
    source_ipv6: str = ""
    mtu: int = 1500
    flow_hash_secret: str = DEFAULT_FLOW_HASH_SECRET  # 32 hex digits (128 bits)
    # Outer addresses of every maglev instance behind the same routers (this one's own
    # source address included, the same list on every instance), one family.  Fragments
    # of a datagram that ECMP split over instances are sent (GRE, marked) to the one
    # instance the 3-tuple hash picks from it (paper 4.3; docs/datapath.md).  Empty: no
    # redirection.
    pool: tuple[str, ...] = ()
    # Loopback backends (127.0.0.0/8, ::1) break address rule 'loopback' unless this is
    # set: a packet encapsulated to a loopback address never leaves the host, so only a
    # single-host setup (health-prober and control-plane tests, a null or pcap sink) can
    # use them.  docs/config.md, "Address rules".
    allow_loopback_backends: bool = False
