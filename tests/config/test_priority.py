"""[[vip]] priority (VIP priority under overload, docs/config.md): default, range, the
tables' priority byte, and what whereis, ctl stats and Prometheus say about it."""

from __future__ import annotations

import pytest

from maglev.config import Config, dump_toml, loads
from maglev.datapath import build_tables
from maglev.datapath.tables import read_tables
from maglev.errors import ConfigError
from maglev.observability.prometheus import render
from maglev.observability.whereis import parse_flow, whereis_config
from maglev.testing import unique

HEAD = '[instance]\nsource_ipv4 = "198.18.0.1"\n'


def two(ph: int | None, pl: int | None) -> str:
    out = HEAD
    for addr, pr in (("203.0.113.5", ph), ("203.0.113.6", pl)):
        out += f'[[vip]]\naddress = "{addr}"\nport = 80\n'
        out += f"priority = {pr}\n" if pr is not None else ""
        out += '[[vip.backend]]\naddress = "198.18.1.1"\n'
    return out


def test_default_is_zero_and_the_value_reaches_the_tables_byte():
    c = loads(two(None, None))
    assert [v.priority for v in c.vips] == [0, 0]
    c = loads(two(7, 2))
    assert [v.priority for v in c.vips] == [7, 2]
    assert [v.priority for v in read_tables(build_tables(c)).vips] == [7, 2]
    assert loads(dump_toml(c)) == c == Config.from_dict(c.to_dict())


@pytest.mark.parametrize("value,want", [
    ("8", "vip[1].priority: 8 is out of range 0..7"),
    ("-3", "vip[1].priority: -3 is out of range 0..7"),
    ("true", "vip[1].priority: True is not an integer"),
    ("1.5", "vip[1].priority: 1.5 is not an integer"),
])
def test_out_of_range_or_wrong_type_names_the_path(value, want):
    text = two(1, 0).replace("priority = 0", f"priority = {value}")
    with pytest.raises(ConfigError) as ei:
        loads(text)
    assert any(p.startswith(want) for p in ei.value.problems), ei.value.problems


def test_whereis_shows_the_priority_and_what_overload_does():
    c = loads(two(7, 0))
    hi = whereis_config(c, parse_flow("198.51.100.1:1234", "203.0.113.5:80/tcp"))
    lo = whereis_config(c, parse_flow("198.51.100.1:1234", "203.0.113.6:80/tcp"))
    assert hi["priority"] == 7 and "never shed" in hi["overload"]
    assert lo["priority"] == 0 and lo["overload"].startswith("shed once its worker's rx ring is 50% full")
    same = whereis_config(loads(two(None, None)), parse_flow("198.51.100.1:1", "203.0.113.6:80/tcp"))
    assert same["priority"] == 0 and "nothing is shed" in same["overload"]
    mid = whereis_config(loads(two(4, 2)), parse_flow("198.51.100.1:1", "203.0.113.6:80/tcp"))
    assert "75% full (priority 2 of 4)" in mid["overload"]


def test_ctl_stats_and_prometheus_show_priority_and_shed_per_vip(tmp_path):
    """collect() over a real region (tables published, steering's shed file written) and
    its Prometheus rendering: the VIP rows carry priority and shed counts."""

    from maglev.observability.metrics import collect
    from maglev.rings import Region
    from maglev.rings.shed_file import shed_path, write_shed

    c = loads(two(7, 2))
    r = Region.create(unique.name("test-prio-"), 1, 256, 64, 1 << 20)
    try:
        r.tables.publish(build_tables(c), [], 1.0)
        write_shed(shed_path(tmp_path), {"203.0.113.6:80/tcp": 41, "(no VIP)": 2})
        snap = collect(r, tmp_path)
        text = render(snap)
    finally:
        r.close()
        r.unlink()
    rows = {v["vip"]: (v["priority"], v["shed"]) for v in snap["vips"]}
    assert rows == {"203.0.113.5:80/tcp": (7, 0), "203.0.113.6:80/tcp": (2, 41)}
    assert snap["shed_no_vip"] == 2 and snap["steering"]["shed"] == 0
    assert 'maglev_vip_priority{vip="203.0.113.6:80/tcp"} 2' in text
    assert 'maglev_vip_shed_packets_total{vip="203.0.113.6:80/tcp"} 41' in text
    assert "maglev_shed_packets_total 0" in text
