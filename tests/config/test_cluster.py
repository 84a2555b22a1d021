"""[cluster] (VIP matching across clusters, paper 4.2): accepted configs round-trip, and
every config that makes the mapping ambiguous or impossible is refused with its path."""

from __future__ import annotations

import pytest

from maglev.config import Config, dump_toml, loads
from maglev.errors import ConfigError

HEAD = '[instance]\nsource_ipv4 = "198.18.0.1"\n'
VIP = '[[vip]]\naddress = "203.0.113.10"\nport = 80\n[[vip.backend]]\naddress = "198.18.1.1"\n'


def conf(cluster: str, peers: str = "", head: str = HEAD, vip: str = VIP) -> str:
    return head + "[cluster]\n" + cluster + peers + vip


PEER_B = '[[cluster.peer]]\nname = "b"\nprefixes = ["203.0.113.64/26"]\nforwarders = ["198.18.9.1"]\n'
GOOD = 'name = "a"\nprefixes = ["203.0.113.0/26", "2001:db8:a::/64"]\nbackup = ["b"]\n'


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        loads(text)
    return ei.value.problems


def test_a_good_cluster_round_trips_and_no_cluster_is_off():
    c = loads(conf(GOOD, PEER_B))
    assert c.cluster.enabled and c.cluster.backup == ("b",)
    assert c.cluster.peers[0].forwarders == ("198.18.9.1",)
    assert loads(dump_toml(c)) == c == Config.from_dict(c.to_dict())
    off = loads(HEAD + VIP)
    assert not off.cluster.enabled and loads(dump_toml(off)) == off


@pytest.mark.parametrize("cluster,peers,want", [
    # host bits / not a prefix / room for a suffix
    ('name = "a"\nprefixes = ["203.0.113.5/26"]\n', "",
     "cluster.prefixes[0]: '203.0.113.5/26' has host bits set (the prefix is 203.0.113.0/26)"),
    ('name = "a"\nprefixes = ["203.0.113.0"]\n', "", "cluster.prefixes[0]: '203.0.113.0' is not a prefix"),
    ('name = "a"\nprefixes = ["203.0.113.1/32"]\n', "", "cluster.prefixes[0]: '203.0.113.1/32': a cluster prefix is /8../31"),
    ('name = "a"\nprefixes = ["203.0.113.0/26", "198.51.100.0/26"]\n', "",
     "cluster.prefixes[1]: a second IPv4 prefix; one per family"),
    ('name = "a"\n', "", "cluster.prefixes: is required"),
    ('name = "A b"\nprefixes = ["203.0.113.0/26"]\n', "", "cluster.name: 'A b' must be 1-32 of a-z 0-9 _ -"),
    # a suffix outside the prefix length: peers must have the local prefix's length
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     '[[cluster.peer]]\nname = "b"\nprefixes = ["198.51.100.0/24"]\n',
     "cluster.peer[0].prefixes[0]: 198.51.100.0/24 is a /24 but cluster.prefixes has 203.0.113.0/26: "
     "a service's suffix must have the same length in every cluster"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     '[[cluster.peer]]\nname = "b"\nprefixes = ["2001:db8:b::/64"]\n',
     "cluster.peer[0].prefixes[0]: 2001:db8:b::/64 has no IPv6 prefix of this cluster to map to"),
    # overlapping prefixes
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     '[[cluster.peer]]\nname = "b"\nprefixes = ["203.0.113.0/26"]\n',
     "cluster.peer[0].prefixes[0]: 203.0.113.0/26 overlaps cluster.prefixes[0] (203.0.113.0/26)"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     PEER_B + '[[cluster.peer]]\nname = "c"\nprefixes = ["203.0.113.64/26"]\n',
     "cluster.peer[1].prefixes[0]: 203.0.113.64/26 overlaps cluster.peer[0].prefixes[0] (203.0.113.64/26)"),
    # names and backup order
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     '[[cluster.peer]]\nname = "a"\nprefixes = ["203.0.113.64/26"]\n',
     "cluster.peer[0].name: 'a' is also the name of cluster"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\nbackup = ["z"]\n', PEER_B,
     "cluster.backup[0]: 'z' is not the name of a cluster.peer"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\nbackup = ["b", "b"]\n', PEER_B,
     "cluster.backup[1]: 'b' is listed twice"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\nbackup = ["b"]\n',
     '[[cluster.peer]]\nname = "b"\nprefixes = ["203.0.113.64/26"]\n',
     "cluster.backup[0]: 'b' has no forwarders to send backup traffic to"),
    # forwarders
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     '[[cluster.peer]]\nname = "b"\nprefixes = ["203.0.113.64/26"]\nforwarders = ["2001:db8:9::1"]\n',
     "cluster.peer[0].forwarders[0]: an IPv6 forwarder needs instance.source_ipv6"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\n',
     '[[cluster.peer]]\nname = "b"\nprefixes = ["203.0.113.64/26"]\nforwarders = ["224.0.0.1"]\n',
     "cluster.peer[0].forwarders[0]: '224.0.0.1' is a multicast address"),
    ('name = "a"\nprefixes = ["203.0.113.0/26"]\nmystery = 1\n', "", "cluster.mystery: unknown key"),
])
def test_bad_cluster_configs_name_their_path(cluster, peers, want):
    probs = errors(conf(cluster, peers))
    assert any(p.startswith(want) for p in probs), probs


def test_a_local_vip_inside_a_peer_prefix_is_refused():
    vip = VIP.replace("203.0.113.10", "203.0.113.70")
    probs = errors(conf(GOOD, PEER_B, vip=vip))
    assert any(p.startswith("vip[0].address: 203.0.113.70 is inside cluster.peer[0].prefixes[0] "
                            "(203.0.113.64/26), another cluster's prefix") for p in probs), probs
