"""Session-7 red-team sweep: what an operator or a hostile peer could still hit after
tests/hostile/'s other files (captures, config files, control messages, floods, kill -9).

Each test is one finding, first seen as a traceback, a hang or a stray file:

* a config path that is a FIFO made ``maglev check`` (and ``run --config``, ``ctl apply``,
  a live ``reload``) wait forever for a writer; a device was read as a config;
* a malformed ``--control``/``--events`` endpoint (``garbage``, ``tcp://host`` without a port,
  ``udp://``) made ``ctl``, ``top`` and ``whereis`` die with a ZMQError traceback;
* ``ctl keygen DIR NAME`` wrote outside DIR for a NAME with ``../``, a hidden ``.key`` for an
  empty NAME, replaced an existing key pair (locking its users out) and created the secret
  world-readable before its chmod;
* ``run --frames`` below the spare reserves hung for ever with nothing received;
  ``--ring-size`` not a power of two failed with the region's internal message.

Every refusal is exit 2 with one ``maglev: error:`` line, nothing started, nothing left.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from maglev.testing import unique
from maglev_cli.main import cli

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"

[[vip]]
address = "203.0.113.10"
port = 80
[[vip.backend]]
address = "198.18.1.1"
"""



def one_error(r, *needles: str) -> str:
    """The exit-2, single ``maglev: error:`` line answer of a CliRunner result."""
    assert r.exception is None or isinstance(r.exception, SystemExit), (r.output, r.exc_info)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maglev: error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def maglev(*args: str, timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from maglev_cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


# -- config paths that are not files -------------------------------------------------------

def test_a_fifo_or_a_device_as_the_config_is_refused_at_once(tmp_path):
    fifo = tmp_path / "maglev.toml"
    os.mkfifo(fifo)
    # a subprocess: before the fix this waited for a writer for ever
    for args in (["check", str(fifo)], ["table", "--config", str(fifo)],
                 ["whereis", "1.2.3.4:5", "203.0.113.10:80/tcp", "--config", str(fifo)],
                 ["run", "--config", str(fifo), "--nic", "gen:packets=1,ipv6=0", "--exit-on-eof"]):
        r = maglev(*args, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert f"maglev: error: {fifo}: cannot read: a FIFO (named pipe), not a config file" in r.stderr, r.stderr
    for dev in ("/dev/null", "/dev/zero"):
        one_error(CliRunner().invoke(cli, ["check", dev]), f"{dev}: cannot read: a character device")
    one_error(CliRunner().invoke(cli, ["check", str(tmp_path)]), f"{tmp_path}: cannot read: Is a directory")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    one_error(CliRunner().invoke(cli, ["check", str(loop)]), "Too many levels of symbolic links")


def test_ctl_apply_and_a_live_reload_of_a_fifo_are_refused(tmp_path):
    pytest.importorskip("maglev.rings")
    from maglev.control.protocol import pack
    from tests.control.test_fuzz_wire import LiveActor

    fifo = tmp_path / "new.toml"
    os.mkfifo(fifo)
    r = maglev("ctl", "--control", f"ipc://{tmp_path}/none.sock", "apply", str(fifo), timeout=60)
    assert r.returncode == 2 and r.stderr.startswith(f"maglev: error: {fifo}: cannot read: a FIFO"), r.stderr
    a = LiveActor()
    try:
        before = a.snapshot()
        src = a.dir / "maglev.toml"
        saved = src.read_bytes()
        src.unlink()
        os.mkfifo(src)  # the operator's editor or a script left a pipe where the file was
        try:
            rep = a.exchange([pack({"v": 1, "id": "r1", "op": "reload", "args": {}})], 30)
        finally:
            src.unlink()
            src.write_bytes(saved)
        assert rep is not None and not rep["ok"] and rep["error"]["code"] == "invalid-config", rep
        assert "a FIFO" in rep["error"]["message"] + str(rep["error"].get("details")), rep
        assert a.proc.poll() is None and a.snapshot() == before
        assert a.call("status")["generation"] == before[0]
    finally:
        a.close()



def test_a_reload_or_replace_that_renames_the_instance_is_refused_whole(tmp_path):
    """instance.name is the run's identity (sockets, state folder, shared memory): a reload
    that renamed it was applied -- status said the new name, the state file held it -- while
    everything else kept the old one, and ``ctl --instance NEW`` found nothing."""
    pytest.importorskip("maglev.rings")
    from maglev.config import Config, dump_toml
    from maglev.control.client import ControlClient
    from maglev.control.protocol import ProtocolError
    from tests.control.test_fuzz_wire import CONFIG, LiveActor

    a = LiveActor()
    try:
        before = a.snapshot()
        src = a.dir / "maglev.toml"
        saved = src.read_bytes()
        renamed = {**CONFIG, "instance": {**CONFIG["instance"], "name": "renamed"}}
        src.write_text(dump_toml(Config.from_dict(renamed)))
        try:
            with ControlClient(a.endpoint, timeout=30) as c:
                for op, args in (("reload", {}), ("reload", {"force": True}),
                                 ("replace-config", {"config": renamed, "force": True})):
                    with pytest.raises(ProtocolError) as e:
                        c.call(op, args)
                    assert e.value.code == "invalid-config" and e.value.field == "instance.name", e.value
                    assert "'renamed' is not this run's name 'fz'" in str(e.value)
                assert c.call("status")["instance"] == "fz"
        finally:
            src.write_bytes(saved)
        assert a.proc.poll() is None and a.snapshot() == before  # nothing changed
    finally:
        a.close()


@pytest.mark.parametrize("args", [
    ["whereis", "1.2.3.4:5", "203.0.113.10:80/tcp", "--json", "--config"],
    ["replay", "{cap}", "--json", "--config"],
    ["table", "--json", "--config"],
])  # fmt: skip
def test_offline_commands_refuse_a_sharded_config_without_shard(args, tmp_path, corpus_dir, monkeypatch):
    """A sharded file's top level has no VIP: ``whereis`` answered no_vip and ``replay``
    dropped every packet as no_vip for a VIP the file has (in shard a).  Now they refuse it
    without ``--shard``, and with it answer from that shard."""
    from maglev import config
    from tests.config.test_shards import BASE

    monkeypatch.delenv(config.SHARD_ENV, raising=False)
    f = tmp_path / "sharded.toml"
    f.write_text(BASE)
    argv = [a.format(cap=corpus_dir / "IPv4Frag.pcap") for a in args] + [str(f)]
    one_error(CliRunner().invoke(cli, argv), f"{f}: has [[shard]] sections ('a', 'b')", "give --shard NAME")
    one_error(CliRunner().invoke(cli, [*argv, "--shard", "zz"]), "no shard named 'zz'")
    r = CliRunner().invoke(cli, [*argv, "--shard", "a"])
    assert r.exit_code == 0, r.output
    out = [json.loads(line) for line in r.output.splitlines()]
    if args[0] == "whereis":
        assert out[0]["verdict"] == "forward" and out[0]["backend"] == "198.18.1.1", out
    elif args[0] == "table":
        assert [t["vip"] for t in out] == ["203.0.113.10:80/tcp"], out
    else:
        assert out[0]["packets_in"] == 3, out

# -- control endpoints -----------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["garbage", "tcp://127.0.0.1", "udp://127.0.0.1:5", "127.0.0.1:5555",
                                      "ipc:/x"])
def test_a_malformed_control_endpoint_is_one_line_not_a_traceback(endpoint, tmp_path):
    keys = ["--client-key", str(tmp_path / "k.key_secret"), "--server-key", str(tmp_path / "k.key")]
    CliRunner().invoke(cli, ["ctl", "keygen", str(tmp_path), "k"])
    for args in (["ctl", "--control", endpoint, "--timeout", "0.2", *keys, "status"],
                 ["top", "--once", "--control", endpoint, "--timeout", "0.2"],
                 ["whereis", "1.2.3.4:5", "203.0.113.10:80/tcp", "--control", endpoint, "--timeout", "0.2"]):
        if args[0] != "ctl" and endpoint.startswith("tcp://"):
            continue  # top and whereis take no CURVE keys: they refuse tcp:// for that first
        r = CliRunner().invoke(cli, args)
        line = one_error(r)
        assert endpoint in line, line


def test_a_malformed_events_endpoint_is_one_line(tmp_path):
    sock = tmp_path / "c.sock"
    sock.touch()  # the control socket "exists"; the events endpoint is the bad one
    r = CliRunner().invoke(cli, ["ctl", "--control", f"ipc://{sock}", "--events", "nonsense", "watch"])
    one_error(r, "events endpoint 'nonsense'")



@pytest.mark.parametrize("args", [["set-weight", "203.0.113.10:80/tcp", "198.18.1.1", str(2**70)],
                                  ["add-backend", "203.0.113.10:80/tcp", "198.18.1.9", "--weight", str(-(2**64))]])
def test_an_argument_msgpack_cannot_carry_is_one_line_not_a_traceback(args, tmp_path):
    sock = tmp_path / "c.sock"
    sock.touch()  # refused before anything is sent: no server needed
    r = CliRunner().invoke(cli, ["ctl", "--control", f"ipc://{sock}", "--timeout", "0.5", *args])
    one_error(r, f"{args[0]}: an argument cannot be sent")


@pytest.mark.parametrize("args, needle", [
    (["--stats", "/nonexistent-s7rd/x.json"], "--stats /nonexistent-s7rd/x.json: no such folder /nonexistent-s7rd"),
])  # fmt: skip  (--duration nan: tests/hostile/test_cli_params.py, for every float option)
def test_backend_agent_refuses_bad_options_before_touching_the_host(args, needle):
    """--stats in a missing folder was a FileNotFoundError traceback at the first write,
    after the TUN device and the VIPs on lo were set up; --duration nan/-1 ran anyway."""
    one_error(CliRunner().invoke(cli, ["backend-agent", "--vip", "203.0.113.10", *args]), needle)
    r = CliRunner().invoke(cli, ["backend-agent", "--vip", "203.0.113.10", "--duration", "-1"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "-1.0 is not in the range" in r.output

# -- ctl keygen ----------------------------------------------------------------------------

def test_keygen_writes_only_plain_names_inside_the_directory_and_never_replaces_a_key(tmp_path):
    keys = tmp_path / "keys"
    for bad in ("", "../escaped", "a/b", ".hidden", "x\ny"):
        one_error(CliRunner().invoke(cli, ["ctl", "keygen", str(keys), bad]), "key name")
    assert not (tmp_path / "escaped.key").exists() and not any(tmp_path.rglob("*.key*"))
    r = CliRunner().invoke(cli, ["ctl", "keygen", str(keys), "ops"])
    assert r.exit_code == 0, r.output
    secret = keys / "ops.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "ops.key").stat().st_mode) == 0o644
    before = secret.read_bytes()
    one_error(CliRunner().invoke(cli, ["ctl", "keygen", str(keys), "ops"]), "already there")
    assert secret.read_bytes() == before  # the pair a server uses is not replaced
    (keys / "half.key_secret").write_text("x")
    one_error(CliRunner().invoke(cli, ["ctl", "keygen", str(keys), "half"]), "half.key_secret: already there")
    assert not (keys / "half.key").exists()
    f = tmp_path / "file"
    f.write_text("")
    one_error(CliRunner().invoke(cli, ["ctl", "keygen", str(f / "sub"), "k"]), "cannot write the key pair")


# -- run sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--frames", "1"], "--frames 1: too few for 2 worker(s) and --burst 256: at least 768"),
    (["--frames", "511", "--workers", "1"], "--frames 511: too few for 1 worker(s) and --burst 256: at least 512"),
    (["--frames", "100", "--workers", "1", "--burst", "8"], "at least 264"),
    (["--ring-size", "3"], "--ring-size 3: must be a power of two from 2 to"),
    (["--ring-size", "0"], "--ring-size 0: must be a power of two"),
    (["--ring-size", "-8"], "--ring-size -8: must be a power of two"),
    (["--ring-size", str(1 << 30)], f"--ring-size {1 << 30}: must be a power of two"),
])  # fmt: skip
def test_run_refuses_a_pool_or_ring_it_cannot_run_with_before_starting(args, needle, shortdir, monkeypatch):
    monkeypatch.setenv("MAGLEV_STATE_DIR", str(shortdir / "state"))
    monkeypatch.setenv("MAGLEV_RUN_DIR", str(shortdir / "run"))
    conf = shortdir / "c.toml"
    inst = unique.name("s7rd")
    conf.write_text(CONF.format(name=inst))
    shm_before = set(os.listdir("/dev/shm"))
    r = CliRunner().invoke(cli, ["run", "--config", str(conf), "--nic", "gen:packets=100,ipv6=0",
                                 "--exit-on-eof", "--json", *args])
    one_error(r, needle)
    assert {n for n in set(os.listdir("/dev/shm")) - shm_before if inst in n} == set()  # others run tests too



@pytest.mark.parametrize("env, needle", [
    ({"MAGLEV_STATE_DIR": "{f}"}, "state folder {f}/{i} (from $MAGLEV_STATE_DIR): {f} is not a folder"),
    ({"MAGLEV_STATE_DIR": "{f}/below"}, "state folder {f}/below/{i} (from $MAGLEV_STATE_DIR): {f} is not a folder"),
    ({"MAGLEV_STATE_DIR": "{d}/dangling"}, "{d}/dangling is a dangling symbolic link"),
    ({"MAGLEV_RUN_DIR": "{f}"}, "control socket folder {f}/{i} (from $MAGLEV_RUN_DIR): {f} is not a folder"),
    ({"XDG_RUNTIME_DIR": "{f}"}, "run folders go to {f} (from $XDG_RUNTIME_DIR): {f} is not a folder"),
    ({"XDG_RUNTIME_DIR": "{d}/none"}, "run folders go to {d}/none (from $XDG_RUNTIME_DIR): no such folder"),
])  # fmt: skip
def test_run_refuses_folders_it_cannot_make_before_starting(env, needle, shortdir, monkeypatch):
    """A file (or a dangling link) where the state, socket or run folders go: the config
    manager died with NotADirectoryError after every process had started, and a bad
    XDG_RUNTIME_DIR was a mkdtemp traceback."""
    inst = unique.name("s7rdf")
    f = shortdir / "a-file"
    f.write_text("")
    (shortdir / "dangling").symlink_to(shortdir / "nowhere")
    monkeypatch.setenv("MAGLEV_STATE_DIR", str(shortdir / "state"))
    monkeypatch.setenv("MAGLEV_RUN_DIR", str(shortdir / "run"))
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(f=f, d=shortdir))
    conf = shortdir / "c.toml"
    conf.write_text(CONF.format(name=inst))
    shm_before = set(os.listdir("/dev/shm"))
    r = CliRunner().invoke(cli, ["run", "--config", str(conf), "--nic", "gen:packets=100,ipv6=0", "--exit-on-eof",
                                 "--workers", "1"])
    one_error(r, needle.format(f=f, d=shortdir, i=inst))
    assert {n for n in set(os.listdir("/dev/shm")) - shm_before if inst in n} == set()  # others run tests too

@pytest.mark.slow
def test_run_with_the_smallest_pool_it_accepts_forwards_everything(shortdir):
    conf = shortdir / "c.toml"
    conf.write_text(CONF.format(name=unique.name("s7rdm")))
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    try:
        r = maglev("run", "--config", str(conf), "--nic", "gen:packets=5000,ipv6=0", "--exit-on-eof", "--json",
                   "--workers", "1", "--frames", "512", timeout=120, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        s = json.loads(r.stdout)
        assert s["packets_in"] == 5000 == s["forwarded"] + sum(s["dropped"].values()), s
        assert s["pool"]["ok"], s["pool"]
    finally:
        from maglev.rings.conntrack_shm import remove_recorded

        remove_recorded(str(shortdir / "state"))


# -- captures --------------------------------------------------------------------------------

CONF6 = CONF.replace('source_ipv4 = "198.18.0.1"', 'source_ipv4 = "198.18.0.1"\nsource_ipv6 = "2001:db8::1"') + """
[[vip]]
address = "2001:db8::10"
port = 80
[[vip.backend]]
address = "2001:db8:1::1"
"""


def _block(o: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(o + "II", btype, len(body) + 12) + body + struct.pack(o + "I", len(body) + 12)


def pcapng_far_future(o: str) -> tuple[bytes, int]:
    """A pcapng whose packets carry timestamps past 2^64 ns (64-bit counts of 1 s, 1 us,
    2^-0 s units): (bytes, packets)."""
    from maglev.testing.packets import eth, ipv4, tcp

    v, c = "203.0.113.10", "198.51.100.7"
    frames = [eth(ipv4(c, v, 6, tcp(40000 + i, 80, src=c, dst=v, flags=2))) for i in range(4)]
    shb = _block(o, 0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out, n = b"", 0
    for tsresol in (None, 0, 0x80, 6, 9):
        opts = b"" if tsresol is None else struct.pack(o + "HHB3xHH", 9, 1, tsresol, 0, 0)
        out += shb + _block(o, 1, struct.pack(o + "HHI", 1, 0, 65535) + opts)
        for f in frames:
            out += _block(o, 6, struct.pack(o + "IIIII", 0, 0xFFFFFFFF, 0xFFFFFFF0 + n % 16, len(f), len(f)) + f)
            n += 1
        out += _block(o, 6, struct.pack(o + "IIIII", 0, 0, 1000, len(frames[0]), len(frames[0])) + frames[0])
        n += 1  # and back to the epoch: the clock never goes backwards for the data path
    return out, n


def raw_ip_huge_orig_len(linktype: int) -> tuple[bytes, int]:
    """A raw-IP pcap whose records claim an original length of 0xFFFFFFFF (the synthetic
    Ethernet header the reader puts in front made it 2^32 + 13)."""
    from maglev.testing.packets import ipv4, tcp

    v, c = "203.0.113.10", "198.51.100.7"
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i in range(4):
        p = ipv4(c, v, 6, tcp(41000 + i, 80, src=c, dst=v, flags=2))
        out += struct.pack("<IIII", 1, 0, len(p), 0xFFFFFFFF) + p
    return out, 4


EXTREMES = {
    "pcapng-le-ts-past-2^64ns.pcapng": lambda: pcapng_far_future("<"),
    "pcapng-be-ts-past-2^64ns.pcapng": lambda: pcapng_far_future(">"),
    "raw101-orig-len-max.pcap": lambda: raw_ip_huge_orig_len(101),
    "raw228-orig-len-max.pcap": lambda: raw_ip_huge_orig_len(228),
}


@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_record_fields_at_their_extremes_replay_in_both_engines(name, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(CONF6.format(name="s7rd-ts"))
    raw, n = EXTREMES[name]()
    cap = tmp_path / name
    cap.write_bytes(raw)
    got = {}
    for engine in ("c", "python"):
        r = CliRunner().invoke(cli, ["replay", str(cap), "--config", str(conf), "--engine", engine, "--json",
                                     "--out", str(tmp_path / "out.pcap")])
        assert r.exception is None or isinstance(r.exception, SystemExit), (engine, r.output, r.exc_info)
        assert r.exit_code == 0, (engine, r.output)
        s = json.loads(r.output)
        assert s["packets_in"] == n == s["forwarded"], s
        got[engine] = (s["forwarded"], s["dropped"], (tmp_path / "out.pcap").read_bytes())
    assert got["c"] == got["python"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pcapng-le-ts-past-2^64ns.pcapng", "raw101-orig-len-max.pcap"])
def test_record_fields_at_their_extremes_through_run(name, shortdir):
    conf = shortdir / "c.toml"
    conf.write_text(CONF6.format(name=unique.name("s7rdt")))
    raw, n = EXTREMES[name]()
    cap = shortdir / name
    cap.write_bytes(raw)
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    try:
        r = maglev("run", "--config", str(conf), "--nic", f"pcap:{cap}", "--workers", "1", "--exit-on-eof",
                   "--json", timeout=120, env=env)
    finally:
        from maglev.rings.conntrack_shm import remove_recorded

        remove_recorded(str(shortdir / "state"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert s["packets_in"] == n == s["forwarded"], s  # before: steering died 6 times (OverflowError)
    assert all(v == 0 for v in s["restarts"].values()) and s["pool"]["ok"], (s["restarts"], s["pool"])


# -- kill -9 of the standby ------------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_standby_is_replaced_and_the_next_restart_is_warm_again(shortdir):
    """The standby (a process with the runtime imported, waiting to become the next
    replacement) is a process of the run too: kill -9 of it left a zombie and made every
    later restart a cold start.  Now it is reaped and replaced; the next killed actor gets
    the new standby; the run balances."""
    import psutil

    from maglev.testing.wait import wait_until
    from tests.hostile.test_accepted_config import _started
    from tests.hostile.test_kill_every_process import Run, balanced, lab

    def standby(r: Run) -> psutil.Process | None:
        actors = {p for pids in _started(r.log).values() for p in pids}
        for p in psutil.Process(r.proc.pid).children():
            try:
                if p.pid not in actors and "--standby" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                    return p
            except psutil.NoSuchProcess:
                continue
        return None

    with lab(shortdir) as (conf, env):
        r = Run(shortdir, conf, env, "sb")
        try:
            wait_until(r.healthy, 60, "the run to be healthy")
            first = wait_until(lambda: standby(r), 30, "a standby")
            first.kill()
            wait_until(lambda: "standby process died; starting another" in r.log.read_text(errors="replace"),
                       30, "the supervisor to see its standby die")
            second = wait_until(lambda: standby(r), 30, "a new standby")
            assert second.pid != first.pid
            assert first.pid not in {p.pid for p in psutil.Process(r.proc.pid).children()}  # reaped, no zombie
            r.kill("worker-0")
            assert r.pid("worker-0") == second.pid  # the replacement was the warm standby
            wait_until(lambda: (s := standby(r)) is not None and s.pid != second.pid, 30, "yet another standby")
            wait_until(r.healthy, 60, "a healthy run after the kills")
            r.flowing("after the kills")
            s = r.stop()
        finally:
            r.close()
        balanced(s, r.log)



# -- a long table build ----------------------------------------------------------------------

def test_the_config_manager_keeps_beating_while_it_builds_tables(tmp_path):
    """Building the tables of two VIPs at the largest table_size took 8.3 s in a live run
    (2026-12-07, load 14), longer than the supervisor waits for a heartbeat (3 s): the
    config manager was killed mid-``set-weight``.  Its builds now run on a helper thread
    while the actor thread keeps sending heartbeats; the result or the error comes back
    as if called directly."""
    import time

    from maglev.actors.base import ActorSpec
    from maglev.actors.config_manager import ConfigManagerActor

    a = ConfigManagerActor(ActorSpec("config", "maglev.actors.config_manager:ConfigManagerActor", str(tmp_path)))
    a.heartbeat_s = 0.1
    beats: list[float] = []
    a.send = lambda type_, **body: beats.append(time.monotonic()) if type_ == "hb" else None

    def slow_build(config: str, down: frozenset = frozenset()) -> bytes:
        time.sleep(1.2)
        return f"{config}:{sorted(down)}".encode()

    t0 = time.monotonic()
    assert a._beating(slow_build, "cfg", down=frozenset({("v", "b")})) == b"cfg:[('v', 'b')]"
    assert len(beats) >= 5 and max(b - a_ for a_, b in zip([t0, *beats[:-1]], beats, strict=True)) < 1.0, beats

    def broken(config: str) -> bytes:
        raise ValueError(f"cannot build {config}")

    with pytest.raises(ValueError, match="cannot build x"):
        a._beating(broken, "x")
