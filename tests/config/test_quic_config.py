"""`quic` on a UDP VIP and `quic_server_id` on its backends (docs/datapath.md, "QUIC
connection IDs"): what is accepted, the round trip, and a path-precise error for each bad
combination."""

from __future__ import annotations

import pytest

from maglev.config import Config, dump_toml, loads
from maglev.control.ops import plain
from maglev.errors import ConfigError

GOOD = """
[instance]
source_ipv4 = "198.18.0.1"
[[vip]]
address = "203.0.113.50"
port = 443
protocol = "udp"
quic = { server_id_offset = 1, server_id_length = 2 }
[[vip.backend]]
address = "198.18.7.1"
quic_server_id = "0A01"
[[vip.backend]]
address = "198.18.7.2"
quic_server_id = "0a02"
[[vip.backend]]
address = "198.18.7.3"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        loads(text)
    return ei.value.problems


def test_accepted_and_round_trips():
    c = loads(GOOD)
    v = c.vips[0]
    assert (v.quic.server_id_offset, v.quic.server_id_length, v.quic.cid_length) == (1, 2, 8)
    assert [b.quic_server_id for b in v.backends] == ["0a01", "0a02", ""]
    assert loads(dump_toml(c)) == c and Config.from_dict(c.to_dict()) == c
    assert plain(c) == c.to_dict()
    # A VIP without quic keeps the file's shape: no quic keys written.
    other = loads('[instance]\nsource_ipv4 = "198.18.0.1"\n[[vip]]\naddress = "203.0.113.9"\n'
                  '[[vip.backend]]\naddress = "198.18.7.9"\n')
    assert "quic" not in other.to_dict()["vip"][0]
    assert "quic_server_id" not in other.to_dict()["vip"][0]["backend"][0]
    assert plain(other) == other.to_dict()


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("server_id_length = 2 }", "server_id_length = 2, cid_length = 2 }",
     "vip[0].quic.server_id_length: a 2-byte server ID at offset 1 does not fit a 2-byte connection ID (cid_length)"),
    ("server_id_offset = 1, server_id_length = 2", "server_id_offset = 15, server_id_length = 8, cid_length = 20",
     "vip[0].quic.server_id_length: a 8-byte server ID at offset 15 does not fit a 20-byte connection ID (cid_length)"),
    ('quic_server_id = "0a02"', 'quic_server_id = "0a01"',
     "vip[0].backend[1].quic_server_id: '0a01' is also backend[0].quic_server_id: server IDs are unique per VIP"),
    ('quic_server_id = "0a02"', 'quic_server_id = "0a0203"',
     "vip[0].backend[1].quic_server_id: '0a0203' must be 4 hex digits (quic.server_id_length = 2)"),
    ('quic_server_id = "0a02"', 'quic_server_id = "zz"',
     "vip[0].backend[1].quic_server_id: 'zz' is not a server ID of 1-8 bytes in hex (e.g. '0a01')"),
    ('protocol = "udp"', 'protocol = "tcp"', "vip[0].quic: applies to UDP VIPs only (protocol is 'tcp')"),
    ("server_id_length = 2 }", "server_id_length = 9 }", "vip[0].quic.server_id_length: 9 is out of range 1..8"),
    ("{ server_id_offset = 1, server_id_length = 2 }", "{ server_id_offset = 1 }",
     "vip[0].quic.server_id_length: is required"),
    ("server_id_length = 2 }", "server_id_length = 2, color = 1 }", "vip[0].quic.color: unknown key"),
])
def test_bad_quic_configs_are_path_precise(old, new, expected):
    assert old in GOOD
    assert problems(GOOD.replace(old, new, 1)) == [expected]


def test_a_server_id_needs_a_quic_vip():
    text = GOOD.replace("quic = { server_id_offset = 1, server_id_length = 2 }\n", "")
    assert problems(text) == [
        "vip[0].backend[0].quic_server_id: the VIP has no quic table (set quic.server_id_length)",
        "vip[0].backend[1].quic_server_id: the VIP has no quic table (set quic.server_id_length)",
    ]


def test_add_backend_over_the_control_ops_checks_the_server_id():
    from maglev.control import ops
    from maglev.control.protocol import ProtocolError

    c = loads(GOOD)
    vip = c.vips[0].key
    out = ops.add_backend(c, {"vip": vip, "backend": {"address": "198.18.7.4", "quic_server_id": "0a04"}})
    assert out.vips[0].backends[-1].quic_server_id == "0a04"
    with pytest.raises(ProtocolError) as ei:
        ops.add_backend(c, {"vip": vip, "backend": {"address": "198.18.7.4", "quic_server_id": "0a01"}})
    assert "vip[0].backend[3].quic_server_id: '0a01' is also backend[0].quic_server_id" in str(ei.value.details)
