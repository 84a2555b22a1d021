"""Hostile and broken configs, one named case each, with the exact error text (issue 15,
item 1): address rules, wrong types, limits, unreadable files, and the command line
(exit 2, one ``maglev: error: path: message`` line per problem, never a traceback)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from maglev import config
from maglev.config_rules import (
    ADDRESS_RULES,
    MAX_BACKEND_PAIRS,
    MAX_FILE_BYTES,
    MAX_PROBLEMS,
    MAX_VIPS,
)
from maglev.errors import ConfigError
from maglev_cli.main import cli

HEAD = '[instance]\nsource_ipv4 = "198.18.0.10"\nsource_ipv6 = "2001:db8::10"\n'


def vip(address: str = "203.0.113.10", *backends: str, extra: str = "") -> str:
    text = f'[[vip]]\naddress = "{address}"\nport = 80\ntable_size = 251\n{extra}'
    for b in backends:
        text += f'[[vip.backend]]\naddress = "{b}"\n'
    return text


def problems(text: str | bytes) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config.loads(text)
    return exc.value.problems


LOOPBACK_HINT = "; for a single-host test set instance.allow_loopback_backends = true"

# (case, document, the exact problems)
CASES = [
    # -- address rules ------------------------------------------------------------------
    ("scoped IPv6 backend", HEAD + vip("2001:db8:100::1", "fe80::1%eth0"),
     ["vip[0].backend[0].address: 'fe80::1%eth0' has a zone index (%eth0) (address rule 'zone-index')"]),
    ("scoped IPv6 VIP", HEAD + vip("2001:db8::1%2", "2001:db8:1::1"),
     ["vip[0].address: '2001:db8::1%2' has a zone index (%2) (address rule 'zone-index')"]),
    ("VIP 0.0.0.0", HEAD + vip("0.0.0.0", "198.18.1.1"),
     ["vip[0].address: '0.0.0.0' is the unspecified address (address rule 'unspecified')"]),
    ("VIP ::", HEAD + vip("::", "2001:db8:1::1"),
     ["vip[0].address: '::' is the unspecified address (address rule 'unspecified')"]),
    ("VIP in 0.0.0.0/8", HEAD + vip("0.1.2.3", "198.18.1.1"),
     ["vip[0].address: '0.1.2.3' is in 0.0.0.0/8 (\"this network\"), not a destination (address rule 'this-network')"]),
    ("broadcast backend", HEAD + vip("203.0.113.10", "255.255.255.255"),
     ["vip[0].backend[0].address: '255.255.255.255' is the limited broadcast address (address rule 'broadcast')"]),
    ("multicast backend", HEAD + vip("203.0.113.10", "224.0.0.5"),
     ["vip[0].backend[0].address: '224.0.0.5' is a multicast address (address rule 'multicast')"]),
    ("IPv6 multicast VIP", HEAD + vip("ff02::1", "2001:db8:1::1"),
     ["vip[0].address: 'ff02::1' is a multicast address (address rule 'multicast')"]),
    ("loopback backend", HEAD + vip("203.0.113.10", "127.0.0.1"),
     ["vip[0].backend[0].address: '127.0.0.1' is a loopback address (address rule 'loopback')" + LOOPBACK_HINT]),
    ("IPv6 loopback backend", HEAD + vip("2001:db8:100::1", "::1"),
     ["vip[0].backend[0].address: '::1' is a loopback address (address rule 'loopback')" + LOOPBACK_HINT]),
    ("loopback VIP even with the opt-in", HEAD + "allow_loopback_backends = true\n" + vip("127.0.0.2", "198.18.1.1"),
     ["vip[0].address: '127.0.0.2' is a loopback address (address rule 'loopback')"]),
    ("link-local backend", HEAD + vip("203.0.113.10", "169.254.1.1"),
     ["vip[0].backend[0].address: '169.254.1.1' is a link-local address (address rule 'link-local')"]),
    ("IPv6 link-local backend", HEAD + vip("2001:db8:100::1", "fe80::1"),
     ["vip[0].backend[0].address: 'fe80::1' is a link-local address (address rule 'link-local')"]),
    ("reserved backend", HEAD + vip("203.0.113.10", "240.0.0.1"),
     ["vip[0].backend[0].address: '240.0.0.1' is in 240.0.0.0/4 (reserved) (address rule 'reserved')"]),
    ("IPv4-mapped backend", HEAD + vip("203.0.113.10", "::ffff:198.18.1.1"),
     ["vip[0].backend[0].address: '::ffff:198.18.1.1' is an IPv4-mapped IPv6 address; write it as "
      "'198.18.1.1' (address rule 'ipv4-mapped')"]),
    ("loopback source address", '[instance]\nsource_ipv4 = "127.0.0.1"\n',
     ["instance.source_ipv4: '127.0.0.1' is a loopback address (address rule 'loopback')"]),
    ("multicast pool member", HEAD + 'pool = ["198.18.0.10", "239.1.1.1"]\n',
     ["instance.pool[1]: '239.1.1.1' is a multicast address (address rule 'multicast')"]),
    ("BGP router id 0.0.0.0", '[bgp]\nrouter_id = "0.0.0.0"\n',
     ["bgp.router_id: '0.0.0.0' is the unspecified address (address rule 'unspecified')"]),
    ("BGP peer 0.0.0.0", '[bgp]\nlocal_asn = 64512\nrouter_id = "198.18.0.1"\n[[bgp.peer]]\naddress = "0.0.0.0"\nasn = 64513\n',
     ["bgp.peer[0].address: '0.0.0.0' is the unspecified address (address rule 'unspecified')"]),
    ("BGP next hop loopback", '[bgp]\nnext_hop_ipv4 = "127.0.0.1"\n',
     ["bgp.next_hop_ipv4: '127.0.0.1' is a loopback address (address rule 'loopback')"]),
    ("backend is a VIP", HEAD + vip("203.0.113.10", "198.18.1.1") + vip("203.0.113.20", "203.0.113.10"),
     ["vip[1].backend[0].address: 203.0.113.10 is a VIP of this config (vip[0]): packets would come back to maglev"]),
    ("backend is our source", HEAD + vip("203.0.113.10", "198.18.0.10"),
     ["vip[0].backend[0].address: 198.18.0.10 is this instance's own source address (instance.source_ipv4): "
      "packets would come back to maglev"]),
    # -- wrong types, ranges ------------------------------------------------------------
    ("bool where int", HEAD + vip(extra="vxlan_port = true\n"), ["vip[0].vxlan_port: True is not an integer"]),
    ("float where int", HEAD + vip("203.0.113.10", "198.18.1.1") + "weight = 1.5\n",
     ["vip[0].backend[0].weight: 1.5 is not an integer"]),
    ("negative", HEAD + vip(extra="vxlan_port = -1\n"), ["vip[0].vxlan_port: -1 is out of range 1..65535"]),
    ("NaN", "[instance]\nmtu = nan\n", ["instance.mtu: nan is not an integer"]),
    ("inf", "[instance]\nmtu = -inf\n", ["instance.mtu: -inf is not an integer"]),
    ("64-bit int", "[instance]\nmtu = 9223372036854775807\n", ["instance.mtu: 9223372036854775807 is out of range 576..9216"]),
    ("huge int in the table", "[conntrack]\ncapacity = " + "9" * 60 + "\n",
     ["conntrack.capacity: a 200-bit integer is out of range 64..67108864"]),
    ("int of 5000 digits", "[instance]\nmtu = " + "7" * 5000 + "\n",
     ["<string>: TOML syntax error: unusable value (Exceeds the limit (4300 digits) for integer string "
      "conversion: value has 5000 digits)"]),
    ("date where string", "[instance]\nname = 1979-05-27\n",
     ["instance.name: a date is not a string"]),
    ("array where table", "instance = [1, 2]\n", ["instance: must be a table, not list"]),
    ("long string", f'[instance]\nname = "{"x" * 5000}"\n', ["instance.name: is longer than 4096 characters"]),
    ("key with a newline", '[instance]\n"a\\nb" = 1\n', ['instance."a\\nb": unknown key']),
    ("HTTP path with a space", HEAD + vip(extra='[vip.health]\ntype = "http"\npath = "/a b"\n'),
     ["vip[0].health.path: '/a b' must be printable ASCII without spaces (percent-encode the rest)"]),
    ("HTTP path with CRLF", HEAD + vip(extra='[vip.health]\ntype = "http"\npath = "/\\r\\nHost: x"\n'),
     ["vip[0].health.path: '/\\r\\nHost: x' must be printable ASCII without spaces (percent-encode the rest)"]),
    ("MAC with a trailing newline", HEAD + vip("203.0.113.10", "198.18.1.1") + 'mac = "02:00:00:00:00:01\\n"\n',
     ["vip[0].backend[0].mac: '02:00:00:00:00:01\\n' is not a MAC address (aa:bb:cc:dd:ee:ff)"]),
    ("multicast MAC", HEAD + vip("203.0.113.10", "198.18.1.1") + 'mac = "01:00:5e:00:00:01"\n',
     ["vip[0].backend[0].mac: '01:00:5e:00:00:01' is a group (multicast) MAC address, not a host's"]),
    ("AS_TRANS", "[bgp]\nlocal_asn = 23456\n", ["bgp.local_asn: 23456 is AS_TRANS (RFC 6793), a placeholder, not an AS number"]),
    ("tcp endpoint without a port", '[control]\nendpoint = "tcp://127.0.0.1"\n',
     ["control.endpoint: 'tcp://127.0.0.1' must be tcp://HOST:PORT (port 0-65535 or *)"]),
    ("ipc path too long", f'[control]\nendpoint = "ipc:///{"x" * 120}"\n',
     [f"control.endpoint: 'ipc:///{'x' * 53}'... (127 characters): an ipc:// path must be 1-107 bytes (a Unix socket path)"]),
    ("OTLP endpoint not a URL", '[tracing]\notlp_endpoint = "collector:4318"\n',
     ["tracing.otlp_endpoint: 'collector:4318' must be an http:// or https:// URL"]),
    # -- combinations and sizes -----------------------------------------------------------
    ("duplicate VIP in another spelling", HEAD + vip("2001:db8:100::1", "2001:db8:1::1")
     + vip("2001:0db8:0100::0001", "2001:db8:1::2"),
     ["vip[1]: duplicate VIP [2001:db8:100::1]:80/tcp (also vip[0])"]),
    ("duplicate backend in another spelling", HEAD + vip("2001:db8:100::1", "2001:db8:1::1", "2001:DB8:1:0::1"),
     ["vip[0].backend[1]: duplicate backend '2001:db8:1::1' (also backend[0])"]),
    ("more backends than table slots", HEAD + '[[vip]]\naddress = "203.0.113.10"\ntable_size = 2\n'
     + "".join(f'[[vip.backend]]\naddress = "198.18.1.{i}"\n' for i in (1, 2, 3)),
     ["vip[0].table_size: 2 slots cannot hold 3 backends with weight > 0 (use a prime at least 100 times "
      "the number of backends)"]),
    ("deeply nested arrays", "a = " + "[" * 3000 + "]" * 3000 + "\n",
     ["<string>: TOML syntax error: arrays or inline tables nested too deeply"]),
    ("deeply nested inline tables", "a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n",
     ["<string>: TOML syntax error: arrays or inline tables nested too deeply"]),
    ("deeply nested tables", "[" + ".".join(["t"] * 2000) + "]\n", ["t.t.t.t.t.t.t.t: nested more than 8 levels deep"]),
    ("not UTF-8", b'[instance]\nname = "\xe9t\xe9"\n', ["<string>: not UTF-8 text (byte 0xe9 at offset 19)"]),
    ("a NUL byte", b"[instance]\x00\n", ["<string>: TOML syntax error: Expected newline or end of document after a "
                                         "statement (at line 1, column 11)"]),
    ("TOML syntax", "[[vip]\n", ["<string>: TOML syntax error: Expected ']]' at the end of an array declaration "
                                 "(at line 1, column 6)"]),
]


@pytest.mark.parametrize("case, text, expected", CASES, ids=[c[0] for c in CASES])
def test_named_case_gives_its_exact_error(case, text, expected):
    assert problems(text) == expected


def test_every_address_rule_has_a_case_here():
    named = {c[2][0].rsplit("(address rule '", 1)[1].split("'")[0] for c in CASES if "(address rule '" in c[2][0]}
    assert named == set(ADDRESS_RULES)


def test_loopback_backends_need_the_explicit_opt_in():
    text = HEAD + "allow_loopback_backends = true\n" + vip("203.0.113.10", "127.0.0.1", "::1", "127.0.0.2")
    c = config.loads(text)
    assert c.instance.allow_loopback_backends is True
    assert [b.address for b in c.vips[0].backends] == ["127.0.0.1", "::1", "127.0.0.2"]
    assert config.loads(config.dump_toml(c)) == c  # the opt-in survives persistence
    # It allows loopback and nothing else: a multicast backend is still refused.
    assert problems(text.replace("127.0.0.2", "224.0.0.1")) == [
        "vip[0].backend[2].address: '224.0.0.1' is a multicast address (address rule 'multicast')"]


def test_roles_that_may_use_loopback_or_unspecified():
    c = config.loads('[bgp]\nlocal_asn = 64512\nrouter_id = "198.18.0.1"\nlisten_address = "0.0.0.0"\n'
                     '[[bgp.peer]]\naddress = "127.0.0.1"\nasn = 64513\nlocal_address = "127.0.0.2"\n')
    assert (c.bgp.listen_address, c.bgp.peers[0].address, c.bgp.peers[0].local_address) == (
        "0.0.0.0", "127.0.0.1", "127.0.0.2")


def test_documentation_and_private_ranges_are_plain_unicast():
    c = config.loads(HEAD + vip("203.0.113.10", "198.18.1.1", "10.1.2.3", "192.168.0.9", "100.64.0.1")
                     + vip("2001:db8:100::1", "2001:db8:1::1", "fd00::5"))
    assert len(c.vips[0].backends) == 4 and len(c.vips[1].backends) == 2


def test_the_problem_list_is_capped_and_counts_the_rest():
    text = "[instance]\n" + "".join(f"k{i} = 1\n" for i in range(MAX_PROBLEMS + 50))
    got = problems(text)
    assert len(got) == MAX_PROBLEMS + 1
    assert got[0] == "instance.k0: unknown key"
    assert got[-1] == "<document>: 50 more problems not listed"


def test_data_path_limits_are_enforced_by_the_validator():
    from maglev.datapath import tables

    assert (MAX_VIPS, MAX_BACKEND_PAIRS) == (tables.MAX_VIPS, tables.MAX_BACKENDS)
    many = {"vip": [{"address": "203.0.113.1"}] * (MAX_VIPS + 1)}
    with pytest.raises(ConfigError) as exc:
        config.Config.from_dict(many)
    assert exc.value.problems == [f"vip: {MAX_VIPS + 1} VIPs; the data path holds at most {MAX_VIPS}"]


@pytest.mark.parametrize("data, expected", [
    ({"instance": {"name": "mg\ud800"}}, ["instance.name: is not valid Unicode text (lone surrogate at character 2)"]),
    ({"instance": {"mtu": 10 ** 5000}}, ["instance.mtu: a 16610-bit integer is out of range 576..9216"]),
    ({b"x": 1, 7: 2}, ["<b'x'>: unknown key", "<7>: unknown key"]),
    ({"instance": {"pool": ("198.18.0.10", b"198.18.0.11")}, "vip": ()},
     ["instance.pool[1]: b'198.18.0.11' is not an IP address"]),
    ({"vip": [{"address": "203.0.113.1", "port": [[[[[[[[[[1]]]]]]]]]]}]}, ["vip[0].port: an array is not an integer"]),
])
def test_from_dict_with_values_toml_cannot_hold(data, expected):
    with pytest.raises(ConfigError) as exc:
        config.Config.from_dict(data)
    assert exc.value.problems == expected


def test_hostile_nesting_through_from_dict():
    deep: list = []
    cur = deep
    for _ in range(200_000):  # far beyond the recursion limit
        cur.append([])
        cur = cur[0]
    with pytest.raises(ConfigError) as exc:
        config.Config.from_dict({"instance": {"name": deep}, "vip": [{"address": "203.0.113.1", "backend": [
            {"address": "198.18.1.1", "name": tuple(deep)}]}]})
    assert exc.value.problems[0] == "instance.name: an array is not a string"


# ------------------------------------------------------------------------ files


def test_file_problems(tmp_path):
    def err(path) -> list[str]:
        with pytest.raises(ConfigError) as exc:
            config.load(path)
        return exc.value.problems

    assert err(tmp_path / "nope.toml") == [f"{tmp_path}/nope.toml: cannot read: No such file or directory"]
    assert err(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]
    f = tmp_path / "f.toml"
    f.write_text("")
    assert err(f / "x.toml") == [f"{f}/x.toml: cannot read: Not a directory"]
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    assert err(big) == [f"{big}: larger than 32 MiB; not a maglev config"]
    assert err("a\0b") == ["'a\\x00b': cannot read: the path holds a NUL character"]
    nl = tmp_path / "new\nline.toml"
    assert err(nl) == [f"{str(nl)!r}: cannot read: No such file or directory"]
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + (HEAD + vip("203.0.113.10", "198.18.1.1")).encode())
    assert config.load(bom).vips[0].address == "203.0.113.10"  # a byte-order mark is accepted


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode; the no-permission message needs a normal user")
    f = tmp_path / "secret.toml"
    f.write_text("")
    f.chmod(0)
    with pytest.raises(ConfigError) as exc:
        config.load(f)
    assert exc.value.problems == [f"{f}: cannot read: Permission denied"]


# ------------------------------------------------------------------------ command line

BAD_FILES = {
    "zone.toml": (HEAD + vip("2001:db8:100::1", "fe80::1%eth0")).encode(),
    "latin1.toml": b'[instance]\nname = "\xe9"\n',
    "deep.toml": ("a = " + "[" * 3000 + "]" * 3000 + "\n").encode(),
    "vip0.toml": (HEAD + vip("0.0.0.0", "224.0.0.1", "255.255.255.255")).encode(),
}


def _commands(path: str) -> list[list[str]]:
    return [
        ["run", "--config", path, "--nic", "gen:seconds=1", "--json"],
        ["replay", "missing.pcap", "--config", path],
        ["table", "--config", path],
        ["whereis", "198.51.100.7:40000", "203.0.113.10:80/tcp", "--config", path],
        ["ctl", "--control", "ipc:///nonexistent/ctl.sock", "apply", path],
    ]


def _expected(path: str, name: str) -> list[str]:
    try:
        config.load(path)
    except ConfigError as exc:
        return exc.problems
    raise AssertionError(f"{name} was accepted")


@pytest.mark.parametrize("name", [*BAD_FILES, "missing.toml", "a-directory"])
def test_every_command_reading_a_config_exits_2_with_one_line_per_problem(tmp_path, name):
    path = tmp_path / name
    if name in BAD_FILES:
        path.write_bytes(BAD_FILES[name])
    elif name == "a-directory":
        path.mkdir()
    want = [f"maglev: error: {p}" for p in _expected(str(path), name)]
    for argv in _commands(str(path)):
        r = CliRunner().invoke(cli, argv)
        assert r.exit_code == 2, (argv, r.output, r.exception)
        assert isinstance(r.exception, SystemExit), (argv, r.exception)
        assert r.stderr.splitlines() == want, argv
        assert "Traceback" not in r.output


def test_ctl_apply_json_error_object(tmp_path):
    path = tmp_path / "vip0.toml"
    path.write_bytes(BAD_FILES["vip0.toml"])
    r = CliRunner().invoke(cli, ["ctl", "--control", "ipc:///nonexistent/ctl.sock", "apply", str(path), "--json"])
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "invalid-config" and err["field"] == "vip[0].address"
    assert err["details"] == _expected(str(path), "vip0.toml")


def test_run_refuses_an_empty_config_with_the_generator(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('[instance]\nname = "e1"\n')
    r = CliRunner().invoke(cli, ["run", "--config", str(path), "--nic", "gen:ipv6=0,seconds=1", "--json"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"maglev: error: vip: {path} has no VIP, and the traffic generator (--nic gen) sends only to the config's "
        "VIPs as they are when it starts; add a [[vip]] or use another --nic"]


def test_run_warns_about_an_empty_config_with_another_nic(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text('[instance]\nname = "e1"\n')
    # The capture does not exist, so the run stops (exit 2) before any process starts;
    # the warning about the empty config comes first.
    r = CliRunner().invoke(cli, ["run", "--config", str(path), "--nic", f"pcap:{tmp_path}/none.pcap", "--json"])
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0] == (f"maglev run: warning: {path} has no VIP: every packet is dropped (no_vip) until VIPs are "
                        "added over the control socket (maglev ctl apply FILE, or add-vip)")
    assert lines[1:] == [f"maglev: error: --nic pcap:{tmp_path}/none.pcap: no such file"]


def test_the_loader_refuses_an_l2_backend_without_a_mac(tmp_path):
    """The loader, not only the table build, says an ``l2`` backend needs its MAC: `maglev
    check` (which also builds the tables) and everything that only loads the file must
    agree (a hypothesis run of tests/hostile/test_config_files.py found the loader taking
    what the build refused)."""
    p = tmp_path / "l2.toml"
    p.write_text('[instance]\nname = "x"\n[[vip]]\naddress = "203.0.113.10"\nport = 80\nprotocol = "tcp"\n'
                 'encap = "l2"\n  [[vip.backend]]\n  address = "198.18.1.11"\n'
                 '  [[vip.backend]]\n  address = "198.18.1.12"\n  mac = "not-a-mac"\n')
    with pytest.raises(ConfigError) as exc:
        config.load(p)
    assert sorted(exc.value.problems) == [  # one line per field: not also "required" for backend[1]
        "vip[0].backend[0].mac: required for encap 'l2'",
        "vip[0].backend[1].mac: 'not-a-mac' is not a MAC address (aa:bb:cc:dd:ee:ff)"]
