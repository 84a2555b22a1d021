"""The config model: the documented minimal shape, per-path errors, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maglev import config
from maglev.errors import ConfigError

MINIMAL = """
[instance]
name = "mg1"
source_ipv4 = "198.18.0.10"      # outer source addresses for encapsulated packets
source_ipv6 = "2001:db8::10"

[[vip]]
address = "203.0.113.10"
port = 80                        # 0 = every port
protocol = "tcp"                 # tcp | udp
encap = "gre"                    # gre | ipip | vxlan | l2
table_size = 65537

  [[vip.backend]]
  address = "198.18.1.11"
  weight = 1
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config.loads(text)
    return exc.value.problems


def test_minimal_shape_is_accepted_as_is():
    c = config.loads(MINIMAL)
    assert c.instance.name == "mg1"
    (vip,) = c.vips
    assert vip.key == "203.0.113.10:80/tcp"
    assert vip.encap == "gre" and vip.table_size == 65537
    assert vip.backends[0].address == "198.18.1.11" and vip.backends[0].key == "198.18.1.11"


def test_ipv6_vips_and_backends_are_valid():
    c = config.loads(
        """
[instance]
source_ipv6 = "2001:db8::10"
[[vip]]
address = "2001:db8:100::1"
port = 443
protocol = "udp"
  [[vip.backend]]
  address = "2001:db8:1::11"
"""
    )
    assert c.vips[0].key == "[2001:db8:100::1]:443/udp"


def test_every_problem_is_reported_with_its_exact_path():
    got = problems(
        """
[instance]
mtu = 100
[[vip]]
address = "203.0.113.1"
table_size = 100
encap = "gre"
protocol = "sctp"
  [[vip.backend]]
  address = "198.18.1.11"
[[vip]]
address = "203.0.113.2"
  [[vip.backend]]
  address = "10.0.0.x"
  weight = "2"
  colour = "red"
"""
    )
    assert got == [
        "instance.mtu: 100 is out of range 576..9216",
        "vip[0].table_size: 100 is not prime (the next prime is 101)",
        "vip[0].backend[0].address: IPv4 backend needs instance.source_ipv4 for gre encapsulation",
        "vip[0].protocol: 'sctp' is not one of tcp, udp",
        "vip[1].backend[0].colour: unknown key",
        "vip[1].backend[0].address: '10.0.0.x' is not an IP address",
        "vip[1].backend[0].weight: '2' is not an integer",
    ]


def test_duplicates_are_rejected():
    got = problems(
        """
[instance]
source_ipv4 = "198.18.0.10"
[[vip]]
address = "203.0.113.1"
port = 80
  [[vip.backend]]
  address = "198.18.1.11"
  [[vip.backend]]
  address = "198.18.1.11"
[[vip]]
address = "203.0.113.1"
port = 80
"""
    )
    assert got == [
        "vip[0].backend[1]: duplicate backend '198.18.1.11' (also backend[0])",
        "vip[1]: duplicate VIP 203.0.113.1:80/tcp (also vip[0])",
    ]


def test_toml_syntax_error_names_the_source(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[[vip]\n")
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    assert exc.value.problems[0].startswith(f"{p}: TOML syntax error")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path / "nope.toml")
    assert "cannot read" in str(exc.value)


def test_tcp_control_endpoint_requires_curve_keys():
    assert problems('[control]\nendpoint = "tcp://127.0.0.1:5555"\n') == [
        "control.endpoint: a tcp:// endpoint needs CURVE keys: set server_secret_key_file and authorized_keys_file"
    ]


def test_bgp_peers_need_asn_and_router_id():
    assert problems('[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 65001\nhold_time = 2\n') == [
        "bgp.peer[0].hold_time: must be 0 or at least 3 seconds (RFC 4271 4.2)",
        "bgp.local_asn: is required when peers are configured",
        "bgp.router_id: is required when peers are configured",
    ]


def test_dump_and_load_round_trip():
    c = config.loads(MINIMAL)
    assert config.loads(config.dump_toml(c)) == c
    assert config.Config.from_dict(c.to_dict()) == c


def test_non_table_top_level_values_are_rejected():
    assert problems('vip = "x"\n') == ["vip: must be an array of tables, not str"]
    assert problems("instance = 3\n") == ["instance: must be a table, not int"]


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(0, 65535), min_size=1, max_size=5),
    name=_names,
    port=st.integers(0, 65535),
    proto=st.sampled_from(["tcp", "udp"]),
)
def test_round_trip_property(weights, name, port, proto):
    c = config.Config.from_dict(
        {
            "instance": {"source_ipv4": "198.18.0.10"},
            "vip": [
                {
                    "address": "203.0.113.5",
                    "port": port,
                    "protocol": proto,
                    "table_size": 101,
                    "backend": [
                        {"address": f"198.18.2.{i}", "weight": w, "name": f"{name}{i}"}
                        for i, w in enumerate(weights)
                    ],
                }
            ],
        }
    )
    assert config.loads(config.dump_toml(c)) == c


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5), lambda s: st.lists(s, max_size=3) | st.dictionaries(st.text(max_size=8), s, max_size=3), max_leaves=10))
def test_arbitrary_data_gives_config_or_config_error(data):
    try:
        config.Config.from_dict(data)
    except ConfigError as exc:
        assert exc.problems and all(": " in p for p in exc.problems)
