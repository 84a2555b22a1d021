"""`maglev ctl` against a served config manager: human tables, stable --json, one-line
errors with a non-zero exit, apply/reload, watch."""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

from maglev_cli.main import cli

VIP = "203.0.113.10:80/tcp"


@pytest.fixture
def ctl(served):
    runner = CliRunner()
    ep = served.server.bound_endpoint

    def run(*args):
        return runner.invoke(cli, ["ctl", "--control", ep, *args], catch_exceptions=False)

    return run


def test_status_and_vips(ctl):
    r = ctl("status")
    assert r.exit_code == 0 and "generation    1" in r.output and "vips          1, backends 3" in r.output
    r = ctl("vips")
    lines = r.output.splitlines()
    assert lines[0].split() == ["VIP", "ENCAP", "M", "CHECK", "BACKENDS", "DOWN", "DRAINED", "ALL-DOWN"]
    assert lines[1].split() == [VIP, "gre", "251", "tcp", "3", "0", "0", "no"]
    j = json.loads(ctl("vips", "--json").output)
    assert j[0]["vip"] == VIP and j[0]["backends"] == 3


def test_backends_table_and_json(ctl):
    r = ctl("backends", "203.0.113.10")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0] == f"{VIP}  M=251  generation 1"
    assert lines[1].split()[:7] == ["BACKEND", "ADDRESS", "WEIGHT", "HEALTH", "ENTRIES", "SHARE", "PACKETS"]
    assert len(lines) == 5
    j = json.loads(ctl("--json", "backends", VIP).output)
    assert set(j) == {"vip", "table_size", "generation", "backends"}
    assert set(j["backends"][0]) == {"backend", "address", "weight", "health", "health_detail", "entries",
                                      "share", "packets"}


def test_changes(ctl, served):
    r = ctl("set-weight", VIP, "198.18.1.1", "4")
    assert r.exit_code == 0 and r.output.startswith("set-weight: generation 2 confirmed by every worker in ")
    r = ctl("drain", VIP, "198.18.1.2", "--json")
    assert json.loads(r.output)["generation"] == 3
    r = ctl("add-backend", VIP, "198.18.1.30", "--weight", "2", "--name", "web30")
    assert r.exit_code == 0
    assert ctl("remove-backend", VIP, "web30").exit_code == 0
    r = ctl("set-weight", VIP, "198.18.1.1", "4")
    assert r.output.startswith("set-weight: nothing to change")
    ws = {b.key: b.weight for b in served.mgr.config.vips[0].backends}
    assert ws == {"198.18.1.1": 4, "198.18.1.2": 0, "198.18.1.3": 1}


def test_errors_are_one_line_and_exit_2(ctl, served):
    r = CliRunner().invoke(
        cli, ["ctl", "--control", served.server.bound_endpoint, "set-weight", VIP, "nope", "1"])
    assert r.exit_code == 2
    assert r.stderr.strip() == f"maglev ctl: set-weight: not-found: VIP {VIP} has no backend 'nope' (field backend)"
    assert r.stdout == ""
    r = ctl("--json", "add-backend", VIP, "198.18.1.40", "--weight", "70000")
    assert r.exit_code == 2
    assert json.loads(r.output) == {"ok": False, "error": {
        "code": "invalid-config", "message": "vip[0].backend[3].weight: 70000 is out of range 0..65535",
        "field": "vip[0].backend[3].weight", "details": ["vip[0].backend[3].weight: 70000 is out of range 0..65535"]}}
    r = ctl("add-backend", VIP, "198.18.1.40", "--weight", "70000")  # as `maglev check` prints a problem
    assert r.exit_code == 2 and r.stderr == "maglev: error: vip[0].backend[3].weight: 70000 is out of range 0..65535\n"
    r = ctl("reload")
    assert r.exit_code == 2  # started without a config file


def test_missing_server_is_one_line(shortdir):
    r = CliRunner().invoke(cli, ["ctl", "--control", f"ipc://{shortdir}/none.sock", "status"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "is maglev running" in r.stderr


def test_apply_file(ctl, served, shortdir, cfgdict):
    from maglev.config import Config, dump_toml

    f = shortdir / "new.toml"
    f.write_text(dump_toml(Config.from_dict(cfgdict(5))))
    r = ctl("apply", str(f))
    assert r.exit_code == 0 and len(served.mgr.config.vips[0].backends) == 5
    f.write_text("[[vip]]\naddress = 'nope'\n")
    r = ctl("apply", str(f))
    assert r.exit_code == 2 and len(served.mgr.config.vips[0].backends) == 5
    f.write_text("[[vip]\n")
    r = ctl("apply", str(f))
    assert r.exit_code != 0 and "TOML syntax error" in r.output


def test_config_prints_loadable_toml(ctl, served):
    from maglev.config import loads

    assert loads(ctl("config").output) == served.mgr.config


def test_watch_streams_events(ctl, served):
    def change():
        time.sleep(0.4)
        from maglev.control.client import ControlClient

        with ControlClient(served.server.bound_endpoint) as c:
            c.call("drain", {"vip": VIP, "backend": "198.18.1.3"})

    t = threading.Thread(target=change)
    t.start()
    r = ctl("watch", "--json", "--count", "2", "--seconds", "5")
    t.join()
    # (CliRunner mixes in stderr, where the watch says when it is connected)
    events = [json.loads(line) for line in r.output.splitlines() if not line.startswith("maglev ctl: watch:")]
    assert [e["topic"] for e in events] == ["generation", "config"]
    assert events[0]["op"] == "drain"


def test_keygen(shortdir):
    r = CliRunner().invoke(cli, ["ctl", "keygen", str(shortdir / "keys"), "ops"])
    assert r.exit_code == 0 and r.output.startswith("public key ")
    assert (shortdir / "keys" / "ops.key_secret").stat().st_mode & 0o777 == 0o600


def test_force_for_emptying_changes(ctl, served, shortdir):
    """`apply` of a file without VIPs and `remove-backend` of a VIP's last backend are
    refused (exit 2, one line naming --force); with --force they are applied."""
    f = shortdir / "empty.toml"
    f.write_text('[instance]\nname = "t1"\nsource_ipv4 = "198.18.0.1"\n')
    r = ctl("apply", str(f))
    assert r.exit_code == 2 and len(served.mgr.config.vips) == 1
    assert r.stderr.startswith("maglev ctl: replace-config: needs-force: replace-config would remove every VIP (1)")
    assert "--force" in r.stderr and r.stderr.count("\n") == 1
    for b in ("198.18.1.1", "198.18.1.2"):
        assert ctl("remove-backend", VIP, b).exit_code == 0
    r = ctl("--json", "remove-backend", VIP, "198.18.1.3")
    assert r.exit_code == 2 and json.loads(r.output)["error"]["code"] == "needs-force"
    assert ctl("remove-backend", VIP, "198.18.1.3", "--force").exit_code == 0
    assert served.mgr.config.vips[0].backends == ()
    r = ctl("apply", "--force", str(f))
    assert r.exit_code == 0 and served.mgr.config.vips == ()
