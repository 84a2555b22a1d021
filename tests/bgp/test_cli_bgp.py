"""`maglev bgp-speak` (hidden) and `python -m maglev.bgp`: the standalone speaker's edges."""

from __future__ import annotations

import json

from click.testing import CliRunner

from maglev_cli.main import cli


def test_bgp_speak_runs_commands_from_stdin(tmp_path):
    conf = tmp_path / "m.toml"
    conf.write_text('[bgp]\nlocal_asn = 64512\nrouter_id = "198.18.0.9"\nlisten_port = 0\n')
    r = CliRunner().invoke(cli, ["bgp-speak", "--config", str(conf), "--announce", "203.0.113.5/32"], input="state\nwithdraw 203.0.113.5/32\nbogus\nquit\n")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert lines[0] == {"event": "ready", "listen": [], "announced": ["203.0.113.5/32"]}
    assert lines[1] == {"reply": "state", "announced": ["203.0.113.5/32"], "peers": []}
    assert lines[2] == {"reply": "withdraw", "prefix": "203.0.113.5/32", "changed": True}
    assert lines[3]["error"].startswith("unknown command 'bogus'")
    assert lines[-1] == {"event": "stopped"}


def test_bgp_speak_bad_config_is_one_line_and_exit_2(tmp_path):
    conf = tmp_path / "m.toml"
    conf.write_text('[bgp]\nlocal_asn = 64512\nrouter_id = "198.18.0.9"\nlisten_port = 0\n[[bgp.peer]]\naddress = "x"\nasn = 1\n')
    r = CliRunner().invoke(cli, ["bgp-speak", "--config", str(conf)])
    assert r.exit_code == 2
    assert "maglev-bgp: error: bgp.peer[0].address: 'x' is not an IP address" in r.output


def test_bgp_speak_is_hidden_from_help():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "bgp-speak" not in r.output
