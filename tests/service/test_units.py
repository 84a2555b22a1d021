"""The shipped systemd units: valid for systemd, consistent with what `maglev doctor` says
each NIC needs, and the unit's command line really runs under the unit's capability set
(readiness, reload, stop)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from maglev.service.doctor import NIC_CAPS

from .conftest import CLI, run_notify_scenario

UNITS = Path(__file__).resolve().parents[2] / "examples" / "systemd"


def parse_unit(path: Path) -> dict[str, list[str]]:
    """key -> every value given (systemd allows a key several times)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def env_of(unit: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in unit.get("Environment", []):
        for word in shlex.split(item):
            k, _, v = word.partition("=")
            env[k] = v
    return env


@pytest.mark.parametrize("name", ["maglev.service", "maglev@.service"])
def test_unit_is_consistent(name):
    u = parse_unit(UNITS / name)
    assert u["Type"] == ["notify"] and u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert u["WatchdogSec"] and u["User"] == ["maglev"]
    ambient = set(u["AmbientCapabilities"][0].split())
    bounding = set(u["CapabilityBoundingSet"][0].split())
    assert ambient == bounding
    assert set(NIC_CAPS["afpacket"]) <= ambient  # the unit's default NIC is afpacket
    env = env_of(u)
    assert env["MAGLEV_NIC"].startswith("afpacket:")
    exec_start = u["ExecStart"][0]
    assert "${MAGLEV_NIC}" in exec_start and "${MAGLEV_CONFIG}" in exec_start


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name,as_name", [("maglev.service", "maglev.service"),
                                          ("maglev@.service", "maglev@edge1.service"),
                                          ("maglev-shard@.service", "maglev-shard@a.service"),
                                          ("maglev-shards.service", "maglev-shards.service")])
def test_systemd_accepts_the_unit(tmp_path, name, as_name):
    # verify checks that ExecStart is executable: point it at one that exists here.
    text = (UNITS / name).read_text().replace("/usr/local/bin/maglev", "/bin/echo")
    (tmp_path / as_name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / as_name)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def _setpriv_prefix(caps: set[str]) -> list[str]:
    names = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in sorted(caps))
    return ["setpriv", f"--bounding-set=-all,{names}", f"--inh-caps=-all,{names}",
            f"--ambient-caps=-all,{names}"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to run with the unit's capability set")
def test_unit_command_line_under_its_capability_set(tmp_path):
    """The ExecStart of maglev.service, with the unit's environment, run with exactly the
    unit's capabilities (uid 0 kept here; tests/lab/test_unprivileged.py runs it as user
    nobody with the same set): ready, reload on SIGHUP, stop on SIGTERM."""
    u = parse_unit(UNITS / "maglev.service")
    caps = set(u["AmbientCapabilities"][0].split())
    words = shlex.split(u["ExecStart"][0])
    assert words[0] == "/usr/local/bin/maglev" and words[1] == "run"
    # The scenario supplies --config, --nic (a capture) and --control; keep the rest.
    rest, i = [], 2
    while i < len(words):
        if words[i] in ("--config", "--nic"):
            i += 2
            continue
        rest.append(words[i])
        i += 1
    env = env_of(u)
    rest = [env.get(w[2:-1], w) if w.startswith("${") else w for w in rest]
    assert rest == ["--workers", env["MAGLEV_WORKERS"]]
    run_notify_scenario(tmp_path, [*CLI, "run", *rest], prefix=_setpriv_prefix(caps))
    # And the capability set really was reduced: a process started the same way holds
    # nothing beyond the unit's list.
    r = subprocess.run([*_setpriv_prefix(caps), "grep", "CapEff", "/proc/self/status"],
                       capture_output=True, text=True, timeout=10)
    eff = int(r.stdout.split()[1], 16)
    from maglev.service.doctor import CAPS

    assert eff == sum(1 << CAPS[c] for c in caps), hex(eff)


def test_shard_unit_runs_one_shard_with_the_unit_settings_of_an_instance():
    """maglev-shard@.service: the instance unit's service settings, `--shard %i` of one
    sharded file, a run and state folder per shard, the NIC from the shard's section."""
    u = parse_unit(UNITS / "maglev-shard@.service")
    inst = parse_unit(UNITS / "maglev@.service")
    for key in ("Type", "NotifyAccess", "WatchdogSec", "ExecReload", "KillMode", "User", "AmbientCapabilities",
                "CapabilityBoundingSet", "RestrictAddressFamilies", "ProtectSystem"):
        assert u[key] == inst[key], key
    exec_start = shlex.split(u["ExecStart"][0])
    assert exec_start[1:] == ["run", "--config", "${MAGLEV_CONFIG}", "--shard", "%i", "$MAGLEV_RUN_ARGS"]
    env = env_of(u)
    assert env["MAGLEV_CONFIG"] == "/etc/maglev/shards.toml"
    assert env["MAGLEV_RUN_DIR"].endswith("shard-%i") and env["MAGLEV_STATE_DIR"].endswith("shard-%i")


def test_all_shards_unit_is_a_notify_service_of_the_launcher():
    """maglev-shards.service: every shard under one launcher, which speaks the notify
    protocol for all (tests/service/test_shard_notify.py runs it under a fake socket)."""
    u = parse_unit(UNITS / "maglev-shards.service")
    one = parse_unit(UNITS / "maglev-shard@.service")
    for key in ("Type", "NotifyAccess", "WatchdogSec", "ExecReload", "KillMode", "User", "AmbientCapabilities",
                "CapabilityBoundingSet", "RestrictAddressFamilies", "ProtectSystem"):
        assert u[key] == one[key], key
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    exec_start = shlex.split(u["ExecStart"][0])
    assert exec_start[1:] == ["run", "--config", "${MAGLEV_CONFIG}", "$MAGLEV_RUN_ARGS"]  # no --shard: all
    assert env_of(u)["MAGLEV_CONFIG"] == "/etc/maglev/shards.toml"
    assert "%i" not in (UNITS / "maglev-shards.service").read_text()
