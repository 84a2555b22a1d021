"""``[instance] pool``: the maglev instances fragments are redirected between (paper 4.3)."""

from __future__ import annotations

import pytest

from maglev import config as cfg
from maglev.errors import ConfigError

BASE = '[instance]\nsource_ipv4 = "198.18.0.10"\nsource_ipv6 = "2001:db8:1::10"\n'


def test_pool_is_accepted_normalised_and_round_trips():
    c = cfg.loads(BASE + 'pool = ["198.18.0.11", "198.18.0.10"]\n')
    assert c.instance.pool == ("198.18.0.11", "198.18.0.10")
    assert cfg.loads(cfg.dump_toml(c)) == c
    v6 = cfg.loads(BASE + 'pool = ["2001:db8:1:0::10", "2001:DB8:1::11"]\n')
    assert v6.instance.pool == ("2001:db8:1::10", "2001:db8:1::11")


def test_no_pool_is_empty():
    c = cfg.loads(BASE)
    assert c.instance.pool == ()
    assert "pool" not in cfg.dump_toml(c)


@pytest.mark.parametrize(
    "pool,error",
    [
        ('"198.18.0.10"', r"instance\.pool: must be an array of IP addresses, not str"),
        ('["198.18.0.10", "nope"]', r"instance\.pool\[1\]: 'nope' is not an IP address"),
        ('["198.18.0.10", 7]', r"instance\.pool\[1\]: 7 is not an IP address"),
        ('["198.18.0.10", "198.18.0.10"]', r"instance\.pool\[1\]: '198.18.0.10' is listed twice"),
        ('["198.18.0.10", "2001:db8:1::10"]', r"instance\.pool: mixes IPv4 and IPv6"),
        ('["198.18.0.11", "198.18.0.12"]', r"instance\.pool: must include this instance's source_ipv4 198.18.0.10"),
        ("[" + ", ".join(f'"198.18.1.{i}"' for i in range(65)) + "]", r"instance\.pool: 65 addresses; at most 64"),
    ],
)
def test_bad_pools_are_reported_with_their_path(pool, error):
    with pytest.raises(ConfigError, match=error):
        cfg.loads(BASE + f"pool = {pool}\n")


def test_pool_family_needs_that_source_address():
    with pytest.raises(ConfigError, match=r"instance\.pool: an IPv6 pool needs instance\.source_ipv6"):
        cfg.loads('[instance]\nsource_ipv4 = "198.18.0.10"\npool = ["2001:db8:1::10"]\n')


def test_pool_in_plain_data_and_state_round_trip():
    from maglev.control.ops import plain

    c = cfg.loads(BASE + 'pool = ["198.18.0.10", "198.18.0.11"]\n')
    assert c.to_dict()["instance"]["pool"] == ["198.18.0.10", "198.18.0.11"]
    assert plain(c) == c.to_dict()
    assert cfg.Config.from_dict(plain(c)) == c
