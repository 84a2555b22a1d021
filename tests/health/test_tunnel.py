"""Health checks through the encapsulation (``through_tunnel``) and ``[health] initial``:
the probe packet (built with the data path's encapsulation kernel, unwrapped by the lab's
decapsulation agent's code), the answer matching, the config rules, and the config
manager keeping unknown backends out of the tables until their first good probe."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from maglev.config import Config, dump_toml, loads
from maglev.datapath import ref_encap
from maglev.datapath.ref_parse import checksum
from maglev.errors import ConfigError
from maglev.health.checks import CheckSpec
from maglev.health.tunnel import answer, encapsulated, syn_packet
from maglev.lab.agent import IPPROTO_GRE, IPPROTO_IPIP, decapsulate

VIP4 = "203.0.113.10"


def cfg(health, encap="gre", initial=None, **vip):
    d = {"instance": {"source_ipv4": "198.18.2.2"},
         "vip": [{"address": VIP4, "port": 80, "encap": encap, "table_size": 13, "health": health,
                  "backend": [{"address": "198.18.2.11"}, {"address": "198.18.2.12"}], **vip}]}
    if initial:
        d["health"] = {"initial": initial}
    return Config.from_dict(d)


def spec_for(c, j=0):
    v = c.vips[0]
    return CheckSpec.for_backend(v, v.backends[j], None, c.instance)


def test_spec_carries_the_tunnel_and_is_per_vip():
    c = cfg({"type": "tcp", "through_tunnel": True})
    s = spec_for(c)
    assert (s.tunnel, s.vip, s.source, s.address, s.port) == ("gre", VIP4, "198.18.2.2", "198.18.2.11", 80)
    assert s.describe() == "tcp://203.0.113.10:80 via gre to 198.18.2.11"
    direct = spec_for(cfg({"type": "tcp"}))
    assert direct.tunnel == "" and direct != s  # a direct and a tunnel check are two probes


@pytest.mark.parametrize(("encap", "proto"), [("gre", IPPROTO_GRE), ("ipip", IPPROTO_IPIP)])
def test_probe_packet_is_what_the_backend_agent_unwraps(encap, proto):
    s = spec_for(cfg({"type": "tcp", "through_tunnel": True}, encap=encap))
    pkt = encapsulated(s, 50000, 0x01020304)
    # outer: IPv4 from our source to the backend, the protocol of the encapsulation
    assert pkt[9] == proto and pkt[12:16] == ipaddress.IPv4Address("198.18.2.2").packed
    assert pkt[16:20] == ipaddress.IPv4Address("198.18.2.11").packed and checksum(pkt[:20]) == 0
    inner = decapsulate(pkt, socket.AF_INET, proto, frozenset({ipaddress.IPv4Address(VIP4).packed}))
    # the SYN as built (the IP ident is random): same TCP segment, addresses, TTL, DF
    syn = syn_packet("198.18.2.2", VIP4, 50000, 80, 0x01020304)
    assert inner[20:] == syn[20:] and inner[12:20] == syn[12:20] and inner[8] == 64 and inner[6] & 0x40
    sport, dport, seq, _ack, _off, flags = struct.unpack_from("!HHIIBB", inner, 20)
    assert (sport, dport, seq, flags) == (50000, 80, 0x01020304, 0x02)
    pseudo = inner[12:20] + struct.pack("!BBH", 0, 6, len(inner) - 20)
    assert checksum(pseudo + inner[20:]) == 0 and checksum(inner[:20]) == 0


def test_c_and_reference_encapsulation_agree_on_the_probe():
    s = spec_for(cfg({"type": "tcp", "through_tunnel": True}, encap="vxlan"))
    inner = syn_packet(s.source, s.vip, 40000, 80, 7)
    frame = bytes(12) + b"\x08\x00" + inner
    from maglev.datapath import encap as dp

    p = ref_encap.EncapParams(type=ref_encap.VXLAN, src=ipaddress.IPv4Address(s.source).packed,
                              dst=ipaddress.IPv4Address(s.address).packed, vni=1, vxlan_port=4789)
    assert dp.encap(frame, 14, 4, 99, p, engine="c") == dp.encap(frame, 14, 4, 99, p, engine="python")


def _reply(spec, sport, ack, flags, src=None):
    tcp = struct.pack("!HHIIBBHHH", spec.port, sport, 1000, ack, 5 << 4, flags, 1000, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                     ipaddress.IPv4Address(src or spec.vip).packed, ipaddress.IPv4Address(spec.source).packed)
    return ip + tcp


def test_answer_matching():
    s = spec_for(cfg({"type": "tcp", "through_tunnel": True}))
    assert answer(_reply(s, 50000, 11, 0x12), s, 50000, 10) == "synack"
    assert answer(_reply(s, 50000, 12, 0x12), s, 50000, 10) is None  # acknowledges another SYN
    assert answer(_reply(s, 50001, 11, 0x12), s, 50000, 10) is None  # another port
    assert answer(_reply(s, 50000, 11, 0x12, src="198.18.2.11"), s, 50000, 10) is None  # not from the VIP
    assert answer(_reply(s, 50000, 11, 0x14), s, 50000, 10) == "rst"
    assert answer(b"\x45" + bytes(10), s, 50000, 10) is None


@pytest.mark.parametrize(("health", "kw", "expected"), [
    ({"type": "http", "through_tunnel": True}, {},
     "vip[0].health.through_tunnel: needs type = 'tcp' (a TCP handshake with the VIP through the tunnel), not 'http'"),
    ({"type": "tcp", "through_tunnel": True}, {"encap": "l2"},
     "vip[0].health.through_tunnel: needs encap gre, ipip or vxlan (vip[0] uses 'l2')"),
    ({"type": "tcp", "through_tunnel": True}, {"protocol": "udp"},
     "vip[0].health.through_tunnel: needs a TCP VIP (vip[0] is udp)"),
    ({"type": "tcp", "through_tunnel": "yes"}, {}, "vip[0].health.through_tunnel: 'yes' is not true or false"),
])
def test_bad_tunnel_configs(health, kw, expected):
    encap = kw.pop("encap", "gre")
    with pytest.raises(ConfigError) as exc:
        cfg(health, encap=encap, **kw)
    assert expected in exc.value.problems


def test_tunnel_check_in_a_pool_is_checked_per_vip():
    d = {"instance": {"source_ipv4": "198.18.2.2", "source_ipv6": "2001:db8:2::2"},
         "vip": [{"address": "2001:db8:f::10", "port": 80, "pool": [{"name": "p"}]}],
         "pool": [{"name": "p", "health": {"type": "tcp", "through_tunnel": True},
                   "backend": [{"address": "198.18.2.11"}]}]}
    with pytest.raises(ConfigError) as exc:
        Config.from_dict(d)
    assert exc.value.problems == ["pool[0].health.through_tunnel: supports IPv4 VIPs only (vip[0] is 2001:db8:f::10)"]


def test_health_initial_parses_round_trips_and_is_checked():
    c = cfg({"type": "tcp"}, initial="unknown")
    assert c.health.initial == "unknown" and c.to_dict()["health"] == {"initial": "unknown"}
    assert loads(dump_toml(c)) == c
    assert "health" not in cfg({"type": "tcp"}).to_dict()  # the default is not written
    with pytest.raises(ConfigError) as exc:
        cfg({"type": "tcp"}, initial="maybe")
    assert exc.value.problems == ["health.initial: 'maybe' is not one of up, unknown"]


def test_initial_unknown_keeps_backends_out_until_a_first_good_probe():
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request
    from maglev.control.publisher import ThreadedPublisher
    from maglev.testing.tables import fallback_build_tables

    c = cfg({"type": "tcp"}, initial="unknown")
    vip = c.vips[0].key
    with ThreadedPublisher(workers=1) as pub:
        m = ConfigManager(c, pub, build_tables=fallback_build_tables)
        m._publish_initial()

        def entries():
            return {r["backend"]: (r["health"], r["entries"]) for r in m.backends(vip)["backends"]}

        assert entries() == {"198.18.2.11": ("unknown", 0), "198.18.2.12": ("unknown", 0)}
        gen = m.generation
        r = m.handle(Request("health-report", {"reports": [{"vip": vip, "backend": "198.18.2.11", "up": True}]}))
        assert r.ok and r.result["changed"] and m.generation == gen + 1
        assert entries() == {"198.18.2.11": ("up", 13), "198.18.2.12": ("unknown", 0)}
        # a backend added later starts unknown too: no slot until it is probed
        d = c.to_dict()
        d["vip"][0]["backend"].append({"address": "198.18.2.13"})
        m.apply(Config.from_dict(d), "test")
        assert entries()["198.18.2.13"] == ("unknown", 0) and entries()["198.18.2.11"] == ("up", 13)
    # the default keeps the old behaviour: unknown serves
    with ThreadedPublisher(workers=1) as pub:
        m = ConfigManager(cfg({"type": "tcp"}), pub, build_tables=fallback_build_tables)
        m._publish_initial()
        assert {r["entries"] > 0 for r in m.backends(vip)["backends"]} == {True}
