"""Session 10: damaged files under the control plane, and rules that ``maglev check``, a
reload and ``maglev run`` must apply alike (docs/operations.md, "Hostile sweep, session 10").

Each test names the hole it closes; each failed on the code before its fix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from maglev import files
from maglev.actors.base import Actor, ActorSpec
from maglev.actors.bgp_speaker import bgp_config
from maglev.config import Config, dump_toml
from maglev.control import persist
from maglev.control.manager import ConfigManager
from maglev.errors import ConfigError, ControlError
from maglev.testing.tables import fallback_build_tables

# What a disk, an operator or a hostile checker can leave in a JSON file maglev reads back.
# json.loads raised RecursionError (not a ValueError) for the first two and a plain
# ValueError, not a JSONDecodeError, for the long number.
DAMAGED = {
    "deep-array": b"[" * 100_000 + b"]" * 100_000,
    "deep-in-config": b'{"format": "maglev-state-1", "config": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
    "5000-digit-number": b'{"format": "maglev-state-1", "config": {"conntrack": {"capacity": ' + b"9" * 5000 + b"}}}",
    "not-utf8": b'{"format": "maglev-state-1", "config": {"instance": {"name": "\xff\xfe"}}}',
    "truncated": b'{"format": "maglev-state-1", "config": {"instance": {"na',
    "future-format": b'{"format": "maglev-state-2", "config": {}}',
    "empty": b"",
    "nul-bytes": b"\x00" * 64,
}


@pytest.mark.parametrize("raw", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_json_is_one_value_error(raw, tmp_path):
    """Every reader catches ValueError (and OSError): each damage must be one of them."""
    p = tmp_path / "f.json"
    p.write_bytes(raw)
    try:
        doc = files.read_json(p)
    except ValueError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= 200
    else:
        assert isinstance(doc, dict) and doc["format"] == "maglev-state-2"  # valid JSON, not ours


@pytest.mark.parametrize("raw", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_state_file_is_set_aside_and_the_start_goes_on(raw, publisher, mkconfig, tmp_path):
    """``maglev run`` died with a traceback at start (RecursionError, the 4300-digit
    ValueError) when the state file held deep nesting or a long number: it is set aside
    like any other unusable state file and the start goes on from the operator's file."""
    from maglev.control.tables import TABLES_AREA_MIN, tables_area

    src = tmp_path / "maglev.toml"
    src.write_text(dump_toml(mkconfig(3)))
    state = tmp_path / "state" / "state.json"
    state.parent.mkdir()
    state.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        persist.load_state(state)
    assert all("\n" not in p for p in info.value.problems)
    assert tables_area(1000, str(state)) == TABLES_AREA_MIN  # `maglev run` sizes its tables first
    mgr = ConfigManager.open(publisher, source_path=src, state_path=state, build_tables=fallback_build_tables)
    assert not mgr.resumed and mgr.config == mkconfig(3)
    assert state.with_name("state.json.invalid").read_bytes() == raw  # kept for the operator
    assert persist.load_state(state)[0] == mgr.config


def _special(kind: str, tmp_path: Path) -> Path:
    """A path naming something that is not a regular file: reading it whole never ends
    (a FIFO without writer blocks, /dev/zero never ends) or fails oddly (a directory)."""
    import os

    p = tmp_path / f"special-{kind}"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        p.symlink_to("/dev/zero")
    else:
        p.mkdir()
    return p


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_state_file_that_is_no_regular_file_never_hangs_the_start(kind, publisher, mkconfig, tmp_path,
                                                                     monkeypatch):
    """The state file was read with Path.read_bytes: a FIFO there hung ``maglev run`` at
    start for ever (before any actor), /dev/zero ran it out of memory.  Now: not a regular
    file, set aside, the start goes on (and the drained state counts as drained)."""
    import os

    from maglev.control import instance
    from maglev.control.tables import TABLES_AREA_MIN, tables_area

    src = tmp_path / "maglev.toml"
    src.write_text(dump_toml(mkconfig(3)))
    state = _special(kind, tmp_path)
    with pytest.raises(ConfigError, match="cannot read: (a FIFO|a character device|Is a directory)"):
        persist.load_state(state)
    assert tables_area(1000, str(state)) == TABLES_AREA_MIN
    mgr = ConfigManager.open(publisher, source_path=src, state_path=state, build_tables=fallback_build_tables)
    assert not mgr.resumed and os.path.lexists(f"{state}.invalid")
    monkeypatch.setenv("MAGLEV_STATE_DIR", str(tmp_path / "sd"))
    d = instance.drain_path("t1")
    d.parent.mkdir(parents=True)
    _special(kind, d.parent).rename(d)
    drained, why = instance.load_drained("t1")
    assert drained and "cannot read" in why


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_curve_key_files_that_are_no_regular_file_are_one_clear_error(kind, tmp_path):
    """``[control] server_secret_key_file`` / ``authorized_keys_file`` naming a FIFO hung
    the config manager's start (zmq.auth and read_text read it whole), /dev/zero never
    ended.  Now ControlError, one line."""
    from maglev.control import curve

    p = _special(kind, tmp_path)
    for load in (curve.load_keypair, curve.load_authorized_keys, curve.load_public_key):
        with pytest.raises(ControlError) as info:
            load(str(p))
        assert "\n" not in str(info.value) and ("not a regular file" in str(info.value)
                                                or "Is a directory" in str(info.value)), str(info.value)


def test_a_second_unusable_state_file_does_not_replace_the_first(publisher, mkconfig, tmp_path):
    """Each unusable state file was moved to ``state.json.invalid``, replacing the one an
    earlier start had set aside (perhaps the accepted config to recover by hand)."""
    src = tmp_path / "maglev.toml"
    src.write_text(dump_toml(mkconfig(3)))
    state = tmp_path / "state.json"
    kept = []
    for i in range(12):
        raw = f'{{"format": "maglev-state-1", "config": {{"x{i}": 1}}}}'.encode()
        kept.append(raw)
        state.write_bytes(raw)
        ConfigManager.open(publisher, source_path=src, state_path=state, build_tables=fallback_build_tables)
    names = ["state.json.invalid", *(f"state.json.invalid.{i}" for i in range(1, 10))]
    assert sorted(p.name for p in tmp_path.glob("state.json.invalid*")) == sorted(names)
    for name, raw in zip(names[:9], kept, strict=False):
        assert (tmp_path / name).read_bytes() == raw  # the first nine, each in its own file
    assert (tmp_path / names[9]).read_bytes() == kept[-1]  # then the last one is reused (bounded)


def test_damaged_drained_file_counts_as_drained(monkeypatch, tmp_path):
    """The drained state (read when a run starts) raised RecursionError on deep nesting."""
    from maglev.control import instance

    monkeypatch.setenv("MAGLEV_STATE_DIR", str(tmp_path))
    path = instance.drain_path("t1")
    path.parent.mkdir(parents=True)
    for raw in (DAMAGED["deep-array"], b'{"format": "maglev-drain-1", "drained": ' + b"9" * 5000 + b"}"):
        path.write_bytes(raw)
        drained, why = instance.load_drained("t1")
        assert drained and why.startswith(f"{path}: damaged (") and "\n" not in why


def test_run_folder_records_survive_damage(tmp_path):
    """The run folder's records (owner, supervisor view, packet traces, AF_XDP hand-off,
    shed counts) read as missing, never as an exception, whatever they hold."""
    from maglev.actors.leftovers import OWNER_FILE, read_owner
    from maglev.nic.afxdp import handoff_path, read_handoff
    from maglev.observability.metrics import SUPERVISOR_VIEW, read_supervisor_view
    from maglev.rings.shed_file import read_shed, shed_path
    from maglev.telemetry.packets import TRACES_FILE, read_traces

    files = [tmp_path / OWNER_FILE, tmp_path / SUPERVISOR_VIEW, tmp_path / TRACES_FILE,
             handoff_path(tmp_path, "eth0"), Path(shed_path(tmp_path))]
    for raw in (*(r for k, r in DAMAGED.items() if k != "future-format"), b"[1, 2]"):
        for f in files:
            f.write_bytes(raw)
        assert read_owner(tmp_path) is None
        assert read_supervisor_view(tmp_path) is None
        assert read_traces(tmp_path) == ([1, 2] if raw == b"[1, 2]" else [])
        assert read_handoff(tmp_path, "eth0") is None
        assert read_shed(tmp_path) == {}


# -- an actor restarted while the run folder's config.json is damaged -----------------------


def _run_folder(tmp_path: Path) -> tuple[Path, Config, Config]:
    """A run folder as `maglev run` leaves it: the start config and a later accepted one."""
    run = tmp_path / "run"
    run.mkdir()
    start = Config.from_dict({"instance": {"name": "t1", "flow_hash_secret": "1" * 32, "source_ipv4": "198.18.0.1"},
                              "conntrack": {"capacity": 4096},
                              "bgp": {"local_asn": 65001, "router_id": "198.18.0.1",
                                      "peer": [{"address": "127.0.0.1", "asn": 65002}]},
                              "vip": [{"address": "203.0.113.10", "backend": [{"address": "198.18.1.1"}]}]})
    accepted = Config.from_dict({**start.to_dict(), "vip": [{"address": "203.0.113.11",
                                                             "backend": [{"address": "198.18.1.2"}]}]})
    (run / persist.RUN_START_CONFIG).write_bytes(persist.encode_state(start.to_dict()))
    (run / persist.RUN_CONFIG).write_bytes(persist.encode_state(accepted.to_dict()))
    return run, start, accepted


@pytest.mark.parametrize("damage", ["truncated", "garbage", "deep", "deleted"])
def test_a_restarted_data_path_actor_survives_a_damaged_run_config(damage, tmp_path, caplog):
    """A worker or steering restarted (after a kill -9) while the run folder's config.json
    was truncated failed its start, and the supervisor stopped the whole run ("steering
    failed to start: ConfigError: .../config.json: not a maglev state file").  What they
    read -- the flow hash secret, [conntrack], the instance name -- is the start's in any
    case: they start on config-start.json, with an error in the log."""
    run, start, accepted = _run_folder(tmp_path)
    actor = Actor(ActorSpec("worker-0", "x:Y", str(run), instance="t1", incarnation=1,
                            params={"config": str(tmp_path / "operator-file-is-broken.toml")}))
    whole = actor.accepted_config()
    assert whole.vips == accepted.vips and whole.flow_hash_key == start.flow_hash_key
    cfg = run / persist.RUN_CONFIG
    if damage == "deleted":
        cfg.unlink()
    else:
        cfg.write_bytes({"truncated": cfg.read_bytes()[:40], "garbage": b"\x00garbage",
                         "deep": DAMAGED["deep-array"]}[damage])
    with caplog.at_level(logging.ERROR, logger="maglev.actor"):
        got = actor.accepted_config()
    assert got == start
    assert (got.flow_hash_key, got.conntrack, got.instance.name) == \
        (whole.flow_hash_key, whole.conntrack, whole.instance.name)
    assert any("the run's accepted config is not usable" in r.getMessage() for r in caplog.records)
    # the BGP speaker's (re)start too (a reload keeps raising: the speaker keeps its [bgp])
    params = {"config_file": str(tmp_path / "operator-file-is-broken.toml")}
    assert bgp_config(params, str(run), at_start=True) == start.bgp
    if damage != "deleted":
        with pytest.raises(ConfigError):
            bgp_config(params, str(run))
    # both files damaged: a clear ConfigError, never the operator's (broken) file
    (run / persist.RUN_START_CONFIG).write_bytes(b"{")
    if damage != "deleted":
        with pytest.raises(ConfigError, match="not a maglev state file"):
            actor.accepted_config()


# -- the control endpoint: one rule for check, reload and bind ------------------------------


@pytest.mark.parametrize("path, why", [
    ("/tmp/mg\x00x.sock", "control character"),
    ("/tmp/mg\nx.sock", "control character"),
    ("@abstract", "abstract sockets"),
    ("", "1-107 bytes"),
    ("/tmp/" + "x" * 103, "1-107 bytes"),
])
def test_check_refuses_every_control_endpoint_the_server_refuses(path, why, shortdir):
    """``[control] endpoint = "ipc:///tmp/\\u0000x"`` passed ``maglev check`` and a reload
    (accepted, generation moved on), then the next ``maglev run`` failed to bind it
    ("Address already in use": the kernel read the path up to the NUL, a directory)."""
    from maglev.control.server import ControlServer

    ep = f"ipc://{path}"
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"control": {"endpoint": ep}})
    assert len(info.value.problems) == 1 and why in info.value.problems[0], info.value.problems
    assert info.value.problems[0].startswith("control.endpoint: ")
    with pytest.raises(ControlError, match=why):
        ControlServer(lambda r: r, ep)
    ok = f"ipc://{shortdir}/ctl.sock"  # and a good one still binds
    Config.from_dict({"control": {"endpoint": ok}})
    ControlServer(lambda r: r, ok).close()


def test_a_change_of_control_is_accepted_with_a_warning(mgr_factory, caplog):
    """A reload or apply that changes [control] was accepted silently, and `ctl config`
    showed an endpoint nobody listens on: the log now says it waits for a restart."""
    mgr = mgr_factory()
    new = Config.from_dict({**mgr.plain(mgr.config), "control": {"endpoint": "ipc:///tmp/elsewhere.sock"}})
    with caplog.at_level(logging.WARNING, logger="maglev.control"):
        mgr.apply(new, "reload")
    assert any("changes [control]" in r.getMessage() for r in caplog.records)


@pytest.fixture
def mgr_factory(publisher, mkconfig, tmp_path):
    def make() -> ConfigManager:
        src = tmp_path / "maglev.toml"
        src.write_text(dump_toml(mkconfig(3)))
        return ConfigManager.open(publisher, source_path=src, state_path=tmp_path / "state.json",
                                  build_tables=fallback_build_tables)
    return make


def test_the_state_file_error_keeps_the_json_decode_error_text(tmp_path):
    """The state file's error names the position, as before (docs/control-protocol.md)."""
    p = tmp_path / "s.json"
    p.write_text("[vip]\n")
    with pytest.raises(ConfigError, match=r"not a maglev state file: Expecting value: line 1 column 2"):
        persist.load_state(p)


# -- a config file only root's DAC override can read -----------------------------------------


def _holds_dac() -> bool:
    from maglev.service.privileges import cap_sets, mask

    return bool(cap_sets().get("CapEff", 0) & mask(("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH")))


@pytest.mark.parametrize("mode, owner", [(0o000, 0), (0o600, 65534), (0o044, 0)])
def test_check_and_run_refuse_a_file_only_the_dac_override_reads(mode, owner, shortdir):
    """As root, ``maglev check`` said ok for a mode-0000 file (root reads anything), and
    ``maglev run`` failed after starting its actors: its config manager reads the file after
    the run dropped CAP_DAC_OVERRIDE ("config failed to start: ConfigError: ...: cannot
    read: Permission denied"); started from a state file, every reload failed the same way.
    Both now refuse it at once, in the same one line."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from maglev_cli.main import cli

    if not _holds_dac():
        pytest.skip("needs CAP_DAC_OVERRIDE (root): without it the file's mode already refuses it everywhere")
    conf = shortdir / "maglev.toml"
    conf.write_text(dump_toml(Config.from_dict({"instance": {"name": "t10dac", "source_ipv4": "198.18.0.1"},
                                                "vip": [{"address": "203.0.113.10",
                                                         "backend": [{"address": "198.18.1.1"}]}]})))
    os.chown(conf, owner, 0)
    conf.chmod(mode)
    line = f"maglev: error: {conf}: cannot read without CAP_DAC_OVERRIDE: Permission denied"
    r = CliRunner().invoke(cli, ["check", str(conf)])
    assert r.exit_code == 2 and r.stderr.startswith(line) and len(r.stderr.splitlines()) == 1, r.output
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    r = subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config",
                        str(conf), "--workers", "1", "--nic", "gen:packets=100", "--exit-on-eof", "--json"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.startswith(line) and len(r.stderr.splitlines()) == 1, r.stderr[-2000:]
    assert not (shortdir / "state").exists()  # refused before anything was made
    conf.chmod(0o644)  # readable by mode: both take it
    r = CliRunner().invoke(cli, ["check", str(conf)])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("ext", [b"\xc7\x00\x00", b"\xc7\x00\x05", b"\xc7\x00\x7f", b"\xc7\x00\x80"])
def test_an_empty_msgpack_extension_is_malformed(ext):
    """The unpacker's ``max_ext_len=0`` refused every extension but one of 0 bytes
    (ext 8 with length 0: ``c7 00 <type>``): ``ExtType(5, b"")`` reached the handlers (and
    came back in error messages as "an array"); docs/control-protocol.md says no extension
    types."""
    import msgpack

    from maglev.control.protocol import ProtocolError, decode_request

    body = msgpack.packb({"v": 1, "id": 3, "op": "set-weight",
                          "args": {"vip": "203.0.113.10:80/tcp", "backend": "b", "weight": 1}})
    assert body.endswith(b"\x01")
    with pytest.raises(ProtocolError) as info:
        decode_request(body[:-1] + ext)  # the weight: an empty extension
    assert info.value.code == "malformed"


@pytest.mark.parametrize("force", [False, True])
def test_a_reload_of_a_sharded_file_in_a_run_that_is_no_shard_changes_nothing(force, mgr_factory, publisher,
                                                                               monkeypatch):
    """``ctl apply`` of a config with [[shard]] sections was refused ("this instance is not a
    shard"), but a reload of the same file read it with cfg.load: refused only as emptying
    every VIP, and with --force accepted -- the run then held shards and no VIP, persisted
    them to its state file and served nothing."""
    from maglev.config import SHARD_ENV
    from maglev.control.protocol import Request

    monkeypatch.delenv(SHARD_ENV, raising=False)
    mgr = mgr_factory()
    mgr.source_path.write_text('[instance]\nname = "t1"\nsource_ipv4 = "198.18.0.1"\n'
                               '[[shard]]\nname = "a"\n[[shard.vip]]\naddress = "203.0.113.10"\nport = 80\n'
                               '[[shard.vip.backend]]\naddress = "198.18.1.1"\n')
    before = (mgr.config, mgr.state_path.read_bytes(), publisher.generation)
    r = mgr.handle(Request(op="reload", args={"force": force}, id=1))
    assert not r.ok and r.error["code"] == "invalid-config", r.error
    assert r.error["message"].startswith("shard: this instance is not a shard")
    assert (mgr.config, mgr.state_path.read_bytes(), publisher.generation) == before
    r = mgr.handle(Request(op="replace-config", args={"config": Config.from_dict(
        __import__("tomllib").loads(mgr.source_path.read_text())).to_dict(), "force": True}, id=2))
    assert not r.ok and r.error["message"] == mgr.handle(Request(op="reload", args={}, id=3)).error["message"]


def test_check_and_run_load_the_curve_key_files_as_the_config_manager_does(shortdir):
    """A tcp:// control endpoint whose key files are missing, not keys, or readable only
    with the DAC override passed ``maglev check``; ``maglev run`` then failed after its
    actors started ("config failed to start: ControlError: cannot read CURVE key pair")."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from maglev.control import curve
    from maglev_cli.main import cli

    _, sec = curve.generate(shortdir, "server")
    client_pub = curve.load_keypair(curve.generate(shortdir, "ops")[1]).public.decode()
    allow = shortdir / "authorized_keys"
    allow.write_text(f"{client_pub} ops\n")
    conf = shortdir / "maglev.toml"

    def write(secret: str, authorized: str) -> None:
        conf.write_text(dump_toml(Config.from_dict({
            "instance": {"name": "t10keys", "source_ipv4": "198.18.0.1"},
            "control": {"endpoint": "tcp://127.0.0.1:0", "server_secret_key_file": secret,
                        "authorized_keys_file": authorized},
            "vip": [{"address": "203.0.113.10", "backend": [{"address": "198.18.1.1"}]}]})))

    write(str(sec), str(allow))
    r = CliRunner().invoke(cli, ["check", str(conf)])
    assert r.exit_code == 0, r.output
    write(str(shortdir / "missing.key_secret"), str(sec))  # a certificate is no list of keys
    r = CliRunner().invoke(cli, ["check", str(conf)])
    lines = r.stderr.splitlines()
    assert r.exit_code == 2 and len(lines) == 2, r.stderr
    assert lines[0] == (f"maglev: error: control.server_secret_key_file: cannot read CURVE key pair from "
                        f"{shortdir}/missing.key_secret: No such file or directory")
    assert lines[1].startswith(f"maglev: error: control.authorized_keys_file: {sec}:") and \
        "is not a 40-character Z85 CURVE public key" in lines[1], lines[1]
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    run = subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config",
                          str(conf), "--workers", "1", "--nic", "gen:packets=100", "--exit-on-eof", "--json"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and run.stderr == r.stderr, run.stderr[-2000:]
    assert not (shortdir / "state").exists()  # refused before anything was made
    if _holds_dac():
        write(str(sec), str(allow))
        os.chown(allow, 65534, 0)
        allow.chmod(0o600)
        r = CliRunner().invoke(cli, ["check", str(conf)])
        assert r.exit_code == 2 and r.stderr == (
            f"maglev: error: control.authorized_keys_file: {allow}: cannot read without CAP_DAC_OVERRIDE: "
            "Permission denied (maglev run drops that capability before its config manager reads it)\n"), r.stderr


def test_ctl_reload_prints_the_problems_as_check_does(served, shortdir):
    """``maglev check FILE`` prints one ``maglev: error: path: problem`` line per problem;
    ``maglev ctl reload`` of the same file printed them joined into one line with "; ", and
    its ``--json`` error object had no ``details`` (docs/config.md says it has)."""
    from click.testing import CliRunner

    from maglev_cli.main import cli

    src = shortdir / "maglev.toml"
    src.write_text(dump_toml(served.mgr.config).replace("port = 80", "port = 99999", 1)
                   .replace('"198.18.1.1"', '"198.18.1.x"', 1).replace("weight = 1", "weight = -1", 1))
    served.mgr.source_path = src
    check = CliRunner().invoke(cli, ["check", str(src)])
    assert check.exit_code == 2 and len(check.stderr.splitlines()) >= 3, check.output
    ep = served.server.bound_endpoint
    r = CliRunner().invoke(cli, ["ctl", "--control", ep, "reload"])
    assert r.exit_code == 2 and r.stderr == check.stderr, (r.stderr, check.stderr)
    r = CliRunner().invoke(cli, ["ctl", "--control", ep, "--json", "reload"])
    err = json.loads(r.stdout)["error"]
    assert r.exit_code == 2 and err["code"] == "invalid-config"
    assert [f"maglev: error: {p}" for p in err["details"]] == check.stderr.splitlines()


def test_a_damaged_start_config_with_a_whole_accepted_one_is_logged_not_fatal(tmp_path, caplog):
    """config-start.json damaged, config.json whole: the restart failed (and the run with
    it); now the accepted config is used, with an error naming the start file."""
    run, start, accepted = _run_folder(tmp_path)
    (run / persist.RUN_START_CONFIG).write_bytes(b"[" * 100_000)
    actor = Actor(ActorSpec("steering", "x:Y", str(run), instance="t1", incarnation=1))
    with caplog.at_level(logging.ERROR, logger="maglev.actor"):
        assert actor.accepted_config() == accepted
    assert any("the config the run started with is not usable" in r.getMessage() for r in caplog.records)
