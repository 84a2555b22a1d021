"""[[shard]] sections (docs/config.md, "Shards"): validation of a whole file (overlaps
between shards are path-precise errors), one shard's view of the file (only its own
section and the shared ones are validated), round trips, and what `maglev ctl --shard`
and a non-shard control socket make of a sharded file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from maglev.config import SHARD_ENV, Config, dump_toml, load_shard, loads
from maglev.errors import ConfigError

BASE = """
[instance]
name = "edge"
source_ipv4 = "198.18.0.1"

[[shard]]
name = "a"
cpus = "0"
workers = 1
[[shard.vip]]
address = "203.0.113.10"
port = 80
[[shard.vip.backend]]
address = "198.18.1.1"

[[shard]]
name = "b"
cpus = "1"
metrics = "127.0.0.1:9109"
[shard.control]
endpoint = "ipc:///tmp/mg-b.sock"
[[shard.vip]]
address = "203.0.113.20"
port = 80
[[shard.vip.backend]]
address = "198.18.1.2"
"""


@pytest.fixture(autouse=True)
def _no_shard_env(monkeypatch):
    monkeypatch.delenv(SHARD_ENV, raising=False)


def problems(text: str, shard: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        Config.from_dict(__import__("tomllib").loads(text), shard=shard)
    return ei.value.problems


def test_whole_file_and_each_shards_own_config():
    c = loads(BASE)
    assert [s.name for s in c.shards] == ["a", "b"] and c.vips == ()
    a, b = c.shard_config("a"), c.shard_config("b")
    assert a.instance.name == "edge-a" and [v.key for v in a.vips] == ["203.0.113.10:80/tcp"]
    assert b.instance.name == "edge-b" and b.control.endpoint == "ipc:///tmp/mg-b.sock"
    assert a.shards == () and a.instance.source_ipv4 == "198.18.0.1"
    assert loads(dump_toml(c)) == c  # the writer keeps the shards
    assert loads(dump_toml(a)) == a


def test_env_selects_one_shard(monkeypatch):
    monkeypatch.setenv(SHARD_ENV, "b")
    c = loads(BASE)
    assert c.instance.name == "edge-b" and [v.address for v in c.vips] == ["203.0.113.20"] and not c.shards


@pytest.mark.parametrize(("edit", "expected"), [
    (('address = "203.0.113.20"', 'address = "203.0.113.10"'),
     "shard[1].vip[0]: VIP 203.0.113.10:80/tcp overlaps shard[0].vip[0] (203.0.113.10:80/tcp, shard 'a'): "
     "each VIP belongs to one shard"),
    (('cpus = "1"', 'cpus = "1,0"'),
     "shard[1].cpus: CPU 0 is also shard[0].cpus (shard 'a'): shards do not share cores"),
    (('cpus = "1"\n', ''),
     "shard[1].cpus: is required with more than one shard (each shard gets its own cores)"),
    (('name = "b"', 'name = "a"'), "shard[1].name: duplicate shard 'a' (also shard[0])"),
    (('cpus = "1"', 'cpus = "one"'), "shard[1].cpus: 'one' is not a CPU list like '0-1' or '2,3'"),
    (('name = "b"', 'name = "b c"'), "shard[1].name: 'b c' must be 1-32 characters of letters, digits, '_', '-'"),
    (('workers = 1', 'workers = 65'), "shard[0].workers: 65 is out of range 0..64"),
    (('workers = 1', 'workers = 1\n[shard.control]\nendpoint = "ipc:///tmp/mg-b.sock"'),
     "shard[1].control.endpoint: endpoint 'ipc:///tmp/mg-b.sock' is also shard[0].control.endpoint"),
])
def test_overlaps_between_shards_are_path_precise(edit, expected):
    old, new = edit
    assert old in BASE
    assert problems(BASE.replace(old, new, 1)) == [expected]


def test_a_vip_serving_every_port_overlaps_one_port_of_the_same_address():
    text = BASE.replace('address = "203.0.113.20"\nport = 80', 'address = "203.0.113.10"\nport = 0')
    assert problems(text) == ["shard[1].vip[0]: VIP 203.0.113.10:0/tcp overlaps shard[0].vip[0] "
                              "(203.0.113.10:80/tcp, shard 'a'): each VIP belongs to one shard"]
    udp = BASE.replace('address = "203.0.113.20"\nport = 80', 'address = "203.0.113.10"\nport = 80\nprotocol = "udp"')
    assert [v.protocol for v in loads(udp).shards[1].vips] == ["udp"]  # another protocol: no overlap


def test_bgp_listeners_of_two_shards_must_differ():
    bgp = '[shard.bgp]\nlocal_asn = 65001\nrouter_id = "198.18.0.1"\n[[shard.bgp.peer]]\naddress = "198.18.0.254"\nasn = 65000\n'
    text = BASE.replace("workers = 1\n", "workers = 1\n" + bgp).replace('metrics = "127.0.0.1:9109"\n',
                                                                        'metrics = "127.0.0.1:9109"\n' + bgp)
    assert problems(text) == ["shard[1].bgp.listen_port: BGP listener '[*]:179' is also shard[0].bgp.listen_port"]
    ok = text.replace('metrics = "127.0.0.1:9109"\n[shard.bgp]\n', 'metrics = "127.0.0.1:9109"\n[shard.bgp]\nlisten_port = 1179\n')
    c = loads(ok)
    assert c.shard_config("b").bgp.listen_port == 1179 and c.shard_config("a").bgp.peers[0].asn == 65000


def test_top_level_vip_bgp_control_belong_in_shards():
    text = BASE.replace("[[shard]]", '[bgp]\nlocal_asn = 1\n[control]\nendpoint = "ipc:///tmp/x"\n'
                                      '[[vip]]\naddress = "203.0.113.5"\n\n[[shard]]', 1)
    assert problems(text) == [
        "vip: a file with [[shard]] sections keeps this in each shard ([[shard.vip]])",
        "bgp: a file with [[shard]] sections keeps this in each shard ([shard.bgp])",
        "control: a file with [[shard]] sections keeps this in each shard ([shard.control])",
    ]
    assert problems("shard = []") == ["shard: is empty: give at least one [[shard]] section or none at all"]
    assert problems("[[shard]]\ncolor = 1") == ["shard[0].color: unknown key", "shard[0].name: is required"]


def test_vip_matching_is_refused_in_a_sharded_file_for_now():
    """[cluster] is not shared between shards yet (docs/config.md, "Shards"): refused with
    its path, for the whole file and for one shard's view of it alike; the sharded file's
    own round trip writes no [cluster] table."""
    text = BASE.replace("[[shard]]", '[cluster]\nname = "a"\nprefixes = ["203.0.113.0/26"]\n\n[[shard]]', 1)
    msg = "cluster: VIP matching ([cluster]) is not supported in a file with [[shard]] sections yet"
    assert problems(text) == [msg]
    assert problems(text, shard="a") == [msg]
    c = loads(BASE)
    assert "cluster" not in c.to_dict() and loads(dump_toml(c)) == c


def test_a_bad_section_stops_the_whole_file_but_not_another_shard():
    bad = BASE.replace('address = "198.18.1.1"', 'address = "198.18.1.x"')
    # The whole file (maglev run, all shards): refused, with the path of the problem.
    assert problems(bad) == ["shard[0].vip[0].backend[0].address: '198.18.1.x' is not an IP address"]
    # Shard b's view of the file (its start with --shard b, its reload): a's section is not its concern.
    b = Config.from_dict(__import__("tomllib").loads(bad), shard="b")
    assert b.instance.name == "edge-b" and b.vips[0].address == "203.0.113.20"
    assert problems(bad, shard="a") == ["shard[0].vip[0].backend[0].address: '198.18.1.x' is not an IP address"]
    assert problems(bad, shard="zz") == ["shard: no shard named 'zz' (the file has: 'a', 'b')"]


def test_load_shard_and_ctl_shard_endpoint(tmp_path, monkeypatch):
    from maglev.control.endpoints import default_control
    from maglev.shards import shard_out

    f = tmp_path / "m.toml"
    f.write_text(BASE)
    conf, own = load_shard(f, "a")
    assert conf.instance.name == "edge-a" and own.cpus == "0" and own.workers == 1
    assert load_shard(f, "b")[1].metrics == "127.0.0.1:9109"
    plain = tmp_path / "plain.toml"
    plain.write_text('[[vip]]\naddress = "203.0.113.1"\n')
    with pytest.raises(ConfigError, match="has no \\[\\[shard\\]\\] sections"):
        load_shard(plain, "a")
    assert shard_out("/x/out.pcap", "a") == "/x/out-a.pcap" and shard_out("null", "a") == "null"
    assert shard_out("afpacket:eth0", "a") == "afpacket:eth0"

    # `maglev ctl --shard` finds the endpoint: a shard's own, else its instance's default socket.
    from maglev_cli.ctl import ctl

    seen = {}

    @ctl.command("__endpoint", hidden=True)
    def _endpoint_probe():
        import click

        seen["control"] = click.get_current_context().obj["control"]

    try:
        r = CliRunner().invoke(ctl, ["--shard", "b", "--config", str(f), "__endpoint"])
        assert r.exit_code == 0, r.output
        assert seen["control"] == "ipc:///tmp/mg-b.sock"
        r = CliRunner().invoke(ctl, ["--shard", "a", "--config", str(f), "__endpoint"])
        assert seen["control"] == default_control("edge-a")
        r = CliRunner().invoke(ctl, ["--shard", "a", "--instance", "edge", "__endpoint"])
        assert seen["control"] == default_control("edge-a")
    finally:
        ctl.commands.pop("__endpoint", None)


def test_a_non_shard_instance_refuses_a_sharded_file():
    from maglev.control import ops
    from maglev.control.protocol import ProtocolError

    with pytest.raises(ProtocolError, match="not a shard of a sharded config"):
        ops.validate(__import__("tomllib").loads(BASE))


def test_run_options_that_name_one_thing_are_refused_for_several_shards(tmp_path):
    from maglev_cli.main import cli

    f = tmp_path / "m.toml"
    f.write_text(BASE)
    r = CliRunner().invoke(cli, ["run", "--config", str(f), "--metrics", "127.0.0.1:9100"])
    assert r.exit_code == 2
    assert "--metrics: the config has 2 shards; set metrics = \"ADDR:PORT\" per shard" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace('cpus = "1"', 'cpus = "0"'))
    r = CliRunner().invoke(cli, ["run", "--config", str(bad)])
    assert r.exit_code == 2 and "shard[1].cpus: CPU 0 is also shard[0].cpus" in r.output


def test_a_shard_nic_is_checked_and_an_interface_belongs_to_one_shard():
    text = BASE.replace("workers = 1\n", 'workers = 1\nnic = "afpacket:eth1"\n').replace(
        'metrics = "127.0.0.1:9109"\n', 'metrics = "127.0.0.1:9109"\nnic = "afpacket:eth1,queues=2"\n')
    assert problems(text) == ["shard[1].nic: NIC 'afpacket:eth1' is also shard[0].nic"]
    ok = loads(text.replace("afpacket:eth1,queues=2", "afpacket:eth2"))
    assert [s.nic for s in ok.shards] == ["afpacket:eth1", "afpacket:eth2"]
    gens = loads(text.replace("afpacket:eth1,queues=2", "gen:rate=1000").replace('"afpacket:eth1"', '"gen:seconds=1"'))
    assert [s.nic for s in gens.shards] == ["gen:seconds=1", "gen:rate=1000"]  # generators are each shard's own
    bad = problems(BASE.replace("workers = 1\n", 'workers = 1\nnic = "carrier-pigeon:1"\n'))
    assert len(bad) == 1 and bad[0].startswith("shard[0].nic: ")
