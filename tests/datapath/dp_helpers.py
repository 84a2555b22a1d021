"""Shared helpers for the data-path tests: C parser access, a config with VIPs of every
kind, and packet shortcuts (built with maglev.testing.packets, independent of the code
under test)."""

from __future__ import annotations

from maglev import config as cfg
from maglev.datapath.ref_parse import Parsed
from maglev.native import ffi, lib

CLIENT4 = "198.51.100.7"
CLIENT6 = "2001:db8:c::7"
VIP4 = "203.0.113.10"
VIP4_ANY = "203.0.113.20"  # port 0 VIP (every port), UDP and TCP
VIP4_NOFRAG = "203.0.113.30"
VIP4_DOWN = "203.0.113.40"  # every backend down
VIP6 = "2001:db8:f::10"

CONFIG_TOML = f"""
[instance]
source_ipv4 = "198.18.0.1"
source_ipv6 = "2001:db8:1::1"
mtu = 1500

[conntrack]
capacity = 4096
tcp_timeout_s = 300
udp_timeout_s = 30

[[vip]]
address = "{VIP4}"
port = 80
protocol = "tcp"
table_size = 65537
[[vip.backend]]
address = "198.18.1.1"
[[vip.backend]]
address = "198.18.1.2"
[[vip.backend]]
address = "198.18.1.3"

[[vip]]
address = "{VIP4_ANY}"
port = 0
table_size = 1009
protocol = "udp"
encap = "ipip"
[[vip.backend]]
address = "198.18.2.1"
[[vip.backend]]
address = "198.18.2.2"

[[vip]]
address = "{VIP4_ANY}"
port = 0
table_size = 1009
protocol = "tcp"
encap = "vxlan"
vxlan_vni = 77
[[vip.backend]]
address = "198.18.3.1"
mac = "02:00:00:00:03:01"

[[vip]]
address = "{VIP4_NOFRAG}"
port = 53
table_size = 1009
protocol = "udp"
allow_fragments = false
[[vip.backend]]
address = "198.18.4.1"

[[vip]]
address = "{VIP4_DOWN}"
port = 80
table_size = 1009
protocol = "tcp"
[[vip.backend]]
address = "198.18.5.1"

[[vip]]
address = "{VIP6}"
port = 443
table_size = 1009
protocol = "tcp"
[[vip.backend]]
address = "2001:db8:2::1"
[[vip.backend]]
address = "2001:db8:2::2"
"""

DOWN = frozenset({(f"{VIP4_DOWN}:80/tcp", "198.18.5.1")})


def config() -> cfg.Config:
    return cfg.loads(CONFIG_TOML)


def c_parse(pkt: bytes) -> tuple[int, Parsed]:
    """The C parser's result as a reference ``Parsed`` (for field-by-field comparison)."""
    out = ffi.new("struct mg_parsed *")
    buf = ffi.new("uint8_t[]", max(len(pkt), 1))
    ffi.memmove(buf, pkt, len(pkt))
    rc = lib.mg_parse(buf, len(pkt), out)
    k = out.key
    p = Parsed(
        src=bytes(k.src), dst=bytes(k.dst),
        sport=int.from_bytes(ffi.buffer(ffi.addressof(k, "sport"), 2), "big"),
        dport=int.from_bytes(ffi.buffer(ffi.addressof(k, "dport"), 2), "big"),
        proto=out.proto, family=out.family, l3_off=out.l3_off, l4_off=out.l4_off,
        l3_len=out.l3_len, ethertype=out.ethertype, frag_off=out.frag_off, ttl=out.ttl,
        vlans=out.vlans, frag=out.frag, tcp_flags=out.tcp_flags, frag_id=out.frag_id,
        icmp_type=out.icmp_type, icmp_code=out.icmp_code,
    )
    return rc, p


# The packet corpus files (tests/data/corpus/pcaps; MANIFEST.tsv has their counts).
CORPUS_FILES = [
    "6in6in6.pcap",
    "802.1ad_QinQ.pcap",
    "IPv4-encapsulated-IPv6.pcap",
    "IPv4Frag.pcap",
    "Vxlan1.pcap",
    "bad-ipv4-version-pgm-heapoverflow.pcap",
    "bro.org-filtered.pcap",
    "bruteforce.pcap",
    "conn-size.pcap",
    "esp_truncated.pcap",
    "forces2.pcap",
    "frag_http_req.pcap",
    "fragmented-3.pcap",
    "gre-over-udp-4754.pcap",
    "gso-ipv4-vxlan-ipv4.pcap",
    "handshake-reorder.pcap",
    "heap-overflow-1.pcap",
    "heapoverflow-tcp_print.pcap",
    "http-vlan-0.pcap",
    "icmp-timeexceeded.pcap",
    "icmp6-destunreach-ip6ext-udp.pcap",
    "icmp6.pcap",
    "icmp_dot1q.pcap",
    "icmpv6-rfc7112.pcap",
    "ip6-hoa-tcp-good-chksum.pcap",
    "ip6-route0-udp-good-chksum.pcap",
    "ip_printroute_asan.pcap",
    "ip_ts_opts_asan.pcap",
    "ipv6-fragmented-dns.pcap",
    "ipv6-reassembly-state-leak.pcap",
    "ipv6-srh-insert-cksum.pcap",
    "ipv6.pcap",
    "ipv6_invalid_length_2.pcap",
    "ipv6_no_next_header.pcap",
    "ipv6hdr-heapoverflow.pcap",
    "isup.pcap",
    "one_tcp_stream_fin_rst_close_packet.pcap",
    "payload-syn.pcap",
    "resp_1_benchmark.pcap",
    "trunc-hdr.pcap",
    "tunnel-direct-bypass.pcap",
    "var-services-std-ports.pcap",
    "various_gre.pcap",
    "vlan-pcp-dei.pcapng",
    "vxlan-overlapping-http-get.pcap",
]


def c_validate(blob: bytes) -> int:
    """The C validator's verdict on a tables blob (0: valid), copied to 8-byte alignment."""
    buf = ffi.new("uint64_t[]", (len(blob) + 7) // 8)
    ffi.memmove(buf, blob, len(blob))
    return lib.mg_tables_validate(buf, len(blob))
