"""CLI surface of the scale-out work: flags and subcommands exist and refuse bad input
with one clear line (no root, no lab needed)."""

from __future__ import annotations

from click.testing import CliRunner

from maglev_cli.main import cli


def test_instances_without_bgp_is_refused(tmp_path):
    r = CliRunner().invoke(cli, ["lab", "up", "--instances", "3", "--state-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert "several instances need --bgp" in r.output
    assert not (tmp_path / "state.json").exists()  # nothing was built


def test_instances_out_of_range_is_refused(tmp_path):
    r = CliRunner().invoke(cli, ["lab", "up", "--bgp", "--instances", "9", "--state-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--instances" in r.output


def test_ctl_has_drain_and_resume_instance():
    r = CliRunner().invoke(cli, ["ctl", "--help"])
    assert r.exit_code == 0
    assert "drain-instance" in r.output and "resume-instance" in r.output


def test_drain_instance_without_a_server_is_one_line_error(tmp_path):
    r = CliRunner().invoke(cli, ["ctl", "--control", f"ipc://{tmp_path}/none.sock", "--timeout", "0.5",
                                 "drain-instance"])  # fmt: skip
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "no control socket" in r.output
