"""The [bgp] section: the keys the speaker added, and their per-path error messages."""

from __future__ import annotations

import pytest

from maglev.config import dump_toml, loads
from maglev.errors import ConfigError

GOOD = """
[bgp]
local_asn = 4200000001
router_id = "198.18.0.2"
listen_address = "198.18.0.2"
connect_retry_time = 5
next_hop_ipv6 = "2001:db8:18::2"

[[bgp.peer]]
address = "198.18.0.1"
asn = 64512
local_address = "198.18.0.2"

[[bgp.peer]]
address = "2001:db8:18::1"
asn = 64512
passive = true
hold_time = 9
"""


def test_full_bgp_section_round_trips():
    cfg = loads(GOOD)
    b = cfg.bgp
    assert (b.local_asn, b.listen_address, b.connect_retry_time) == (4200000001, "198.18.0.2", 5)
    assert b.peers[0].local_address == "198.18.0.2" and b.peers[1].passive and b.peers[1].hold_time == 9
    assert loads(dump_toml(cfg)) == cfg


def test_defaults():
    b = loads('[bgp]\nlocal_asn = 64512\nrouter_id = "198.18.0.2"\n[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 64513\n').bgp
    assert (b.listen_address, b.connect_retry_time, b.listen_port) == ("", 30, 179)
    assert (b.peers[0].port, b.peers[0].hold_time, b.peers[0].passive, b.peers[0].local_address) == (179, 90, False, "")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[bgp]\nconnect_retry_time = 0', "bgp.connect_retry_time: 0 is out of range 1..65535"),
        ('[bgp]\nlisten_address = "x"', "bgp.listen_address: 'x' is not an IP address"),
        (
            '[bgp]\nlocal_asn = 1\nrouter_id = "198.18.0.2"\n[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 2\nlocal_address = "2001:db8::1"',
            "bgp.peer[0].local_address: must be of the same address family as the peer address",
        ),
        (
            '[bgp]\nlocal_asn = 1\nrouter_id = "198.18.0.2"\n[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 2\n'
            '[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 3',
            "bgp.peer[1].address: duplicate peer 198.18.0.1 (also peer[0])",
        ),
        (
            '[bgp]\nlocal_asn = 1\nrouter_id = "198.18.0.2"\nlisten_port = 0\n[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 2\npassive = true',
            "bgp.peer[0].passive: a passive peer needs bgp.listen_port (it is 0)",
        ),
        ('[bgp]\n[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 2\nlocal_adress = "198.18.0.2"', "bgp.peer[0].local_adress: unknown key"),
    ],
    ids=["retry-0", "listen-address", "local-address-family", "duplicate-peer", "passive-without-listener", "typo"],
)
def test_bgp_errors_name_the_path(text, problem):
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert problem in info.value.problems
