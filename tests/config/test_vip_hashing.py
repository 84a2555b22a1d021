"""[[vip]] hash, udp_ignore_src_port and conntrack: defaults, accepted values,
and every bad value or combination with a path-precise error."""

from __future__ import annotations

import pytest

from maglev.config import Config, dump_toml, loads
from maglev.errors import ConfigError

HEAD = '[instance]\nsource_ipv4 = "198.18.0.1"\n'


def vip(extra: str, protocol: str = "udp") -> str:
    return (HEAD + f'[[vip]]\naddress = "203.0.113.5"\nport = 53\nprotocol = "{protocol}"\n{extra}\n'
            '[[vip.backend]]\naddress = "198.18.1.1"\n')


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        loads(text)
    return ei.value.problems


def test_defaults_are_5tuple_with_conntrack():
    v = loads(vip("")).vips[0]
    assert (v.hash, v.udp_ignore_src_port, v.conntrack) == ("5tuple", False, True)


def test_every_option_is_accepted_and_round_trips_through_toml():
    c = loads(vip('hash = "src_ip"\nconntrack = false'))
    v = c.vips[0]
    assert (v.hash, v.conntrack) == ("src_ip", False)
    assert loads(dump_toml(c)) == c
    v = loads(vip('udp_ignore_src_port = true')).vips[0]
    assert v.udp_ignore_src_port
    v = loads(vip('hash = "dst_port"\nallow_fragments = false')).vips[0]
    assert v.hash == "dst_port"
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("extra,protocol,want", [
    ('hash = "sticky"', "udp", "vip[0].hash: 'sticky' is not one of 5tuple, src_ip, dst_port"),
    ("hash = 3", "udp", "vip[0].hash: 3 is not a string"),
    ('udp_ignore_src_port = "yes"', "udp", "vip[0].udp_ignore_src_port: 'yes' is not true or false"),
    ("udp_ignore_src_port = true", "tcp", "vip[0].udp_ignore_src_port: applies to UDP VIPs only"),
    ('udp_ignore_src_port = true\nhash = "src_ip"', "udp",
     "vip[0].udp_ignore_src_port: hash 'src_ip' leaves the source port out already"),
    ("conntrack = false", "tcp", "vip[0].conntrack: false is for stateless UDP services"),
    ("conntrack = 0", "udp", "vip[0].conntrack: 0 is not true or false"),
    ('hash = "dst_port"', "udp", "vip[0].hash: 'dst_port' needs allow_fragments = false"),
    # VIP priority under overload (issue 17 item 4, tests/config/test_priority.py).
    ("priority = 8", "udp", "vip[0].priority: 8 is out of range 0..7"),
    ("priority = -1", "tcp", "vip[0].priority: -1 is out of range 0..7"),
    ('priority = "high"', "tcp", "vip[0].priority: 'high' is not an integer"),
])
def test_bad_values_name_their_path(extra, protocol, want):
    probs = errors(vip(extra, protocol))
    assert any(p.startswith(want) for p in probs), probs
