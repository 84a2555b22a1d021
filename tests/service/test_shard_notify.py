"""``maglev run`` of every shard under systemd's notify protocol (maglev/service/
shard_notify.py): READY=1 only once every shard is ready, a reload answered when every
shard has answered, the watchdog fed only while every shard feeds its own, a shard's exit
in STATUS, datagrams from other processes dropped -- against a fake NOTIFY_SOCKET (a unix
datagram socket the test reads), with real shard processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from maglev.service.shard_notify import ShardNotify
from maglev.service.systemd import Notifier
from maglev.testing import unique
from maglev.testing.notify import NotifySocket
from maglev.testing.packets import write_pcap
from maglev.testing.wait import wait_until

from .conftest import CLI, under_notify

# A stand-in shard: sends, through its own $NOTIFY_SOCKET, each line it reads ("K=V;K=V"),
# exits with the code of a line "exit N".
FAKE = textwrap.dedent('''
    import sys
    from maglev.service.systemd import Notifier
    n = Notifier()
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("exit"):
            sys.exit(int(line.split()[1]))
        n.notify(**dict(kv.split("=", 1) for kv in line.split(";")))
        print("sent", flush=True)
''')


def _fake(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**env, "PYTHONPATH": os.pathsep.join(sys.path)})


def _say(p: subprocess.Popen, line: str) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "sent"  # the datagram is out before we go on


def _quiet(ns: NotifySocket, key: str, seconds: float, after: int) -> None:
    ns.collect(seconds)
    assert not [m for m in ns.messages[after:] if key in m], ns.messages[after:]


def test_ready_only_when_every_shard_is_ready_then_reload_and_exit(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    sn = ShardNotify(["a", "b"], Notifier({"NOTIFY_SOCKET": str(ns.path)}), poll_s=0.02)
    procs = {}
    try:
        for name in ("a", "b"):
            env = sn.child_env(name, {"NOTIFY_SOCKET": "/somewhere/else", "WATCHDOG_PID": "1", "PATH": "/bin"})
            assert env["NOTIFY_SOCKET"].startswith("@maglev-shards-") and "WATCHDOG_PID" not in env
            assert "WATCHDOG_USEC" not in env  # the launcher has no watchdog here
            procs[name] = _fake(env)
            sn.started(name, procs[name])
        sn.start()
        _say(procs["a"], "READY=1;STATUS=forwarding with 1 workers")
        _quiet(ns, "READY", 0.3, 0)  # a alone is not enough
        # Another process (this one) cannot speak for shard b.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as fake:
            fake.sendto(b"READY=1", sn.shards["b"].address)
        _quiet(ns, "READY", 0.3, 0)
        # the launcher's thread reads its shards' sockets every 20 ms: wait for it to have
        # read the forged datagram (a starved thread may not have run in those 0.3 s)
        wait_until(lambda: sn.shards["b"].foreign == 1, 10, "the forged READY=1 counted as foreign")
        assert sn.shards["b"].foreign == 1 and not sn.shards["b"].ready
        _say(procs["b"], "READY=1;STATUS=forwarding with 1 workers")
        i = ns.wait_for("READY", "1", 5)
        assert ns.messages[i]["MAINPID"] == str(os.getpid())
        assert ns.messages[i]["STATUS"] == "2 shards ready: a, b"

        # A reload: RELOADING=1 at once, READY=1 only when both answered; b refused.
        sn.reload_requested()
        j = ns.wait_for("RELOADING", "1", 5, after=i + 1)
        _say(procs["a"], "READY=1;STATUS=reloaded")
        _quiet(ns, "READY", 0.3, j)
        _say(procs["b"], "READY=1;STATUS=reload refused: vip[0].port: bad")
        k = ns.wait_for("READY", "1", 5, after=j)
        assert ns.messages[k]["STATUS"] == "b: reload refused: vip[0].port: bad"

        # A shard that exits is named; a reload then waits only for the live one.
        procs["a"].stdin.write("exit 3\n")
        procs["a"].stdin.flush()
        procs["a"].wait(10)
        m = ns.wait_for("STATUS", "shard a exited with code 3; running: b", 5, after=k + 1)
        sn.reload_requested()
        j = ns.wait_for("RELOADING", "1", 5, after=m)
        _say(procs["b"], "READY=1;STATUS=reloaded")
        k = ns.wait_for("READY", "1", 5, after=j)
        assert ns.messages[k]["STATUS"] == "reloaded"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
        sn.close()
        ns.close()


def test_a_shard_that_exits_before_ready_keeps_the_launcher_from_ready(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    sn = ShardNotify(["a", "b"], Notifier({"NOTIFY_SOCKET": str(ns.path)}), poll_s=0.02)
    procs = {n: _fake(sn.child_env(n)) for n in ("a", "b")}
    try:
        for n, p in procs.items():
            sn.started(n, p)
        sn.start()
        procs["a"].stdin.write("exit 1\n")
        procs["a"].stdin.flush()
        procs["a"].wait(10)
        ns.wait_for("STATUS", "shard a exited before it was ready with code 1; running: b", 5)
        _say(procs["b"], "READY=1")
        _quiet(ns, "READY", 0.3, 0)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.stdin.close()
            p.stdout.close()
        sn.close()
        ns.close()


def test_watchdog_is_fed_only_while_every_shard_feeds_its_own(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    n = Notifier({"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"})
    sn = ShardNotify(["a", "b"], n)  # driven by hand (explicit clock), no thread
    try:
        assert sn.child_env("a", {})["WATCHDOG_USEC"] == "1000000"  # the shards get the interval
        t = 1000.0
        sent = []
        for step in range(6):  # both ping every 0.5 s: the launcher pings every 0.5 s
            now = t + 0.5 * step
            sn.on_message("a", {"WATCHDOG": "1"}, now)
            sn.on_message("b", {"WATCHDOG": "1"}, now)
            before = len(n.sent)
            sn.tick(now)
            sent.append(len(n.sent) - before)
        assert sent == [1, 1, 1, 1, 1, 1]
        # b's supervisor hangs: once its last ping is older than the interval, nothing more
        last_b = t + 2.5
        fed = []
        for step in range(6, 12):
            now = t + 0.5 * step
            sn.on_message("a", {"WATCHDOG": "1"}, now)
            before = len(n.sent)
            sn.tick(now)
            fed.append((now - last_b, len(n.sent) - before))
        assert all(k == 1 for age, k in fed if age <= 1.0) and all(k == 0 for age, k in fed if age > 1.0), fed
        ns.collect(0.2)
        assert sum(1 for m in ns.messages if m.get("WATCHDOG") == "1") == 6 + 2
    finally:
        sn.close()
        ns.close()


def test_without_systemd_nothing_is_bound_and_the_shards_get_no_socket():
    sn = ShardNotify(["a"], Notifier({}))
    assert not sn.enabled and sn.shards["a"].sock is None
    env = sn.child_env("a", {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "5", "HOME": "/"})
    assert env == {"HOME": "/"}
    sn.reload_requested()  # no-ops
    sn.stopping()
    sn.close()


SHARDS = """
[instance]
name = "{name}"
source_ipv4 = "198.18.3.2"

[[shard]]
name = "a"
workers = 1
cpus = "{cpu_a}"
[[shard.vip]]
address = "203.0.113.31"
port = 80
[[shard.vip.backend]]
address = "198.18.3.11"

[[shard]]
name = "b"
workers = 1
cpus = "{cpu_b}"
[[shard.vip]]
address = "203.0.113.32"
port = 80
[[shard.vip.backend]]
address = "198.18.3.12"
"""


def _shard_status(conf, shard: str, env: dict[str, str]) -> dict:
    r = subprocess.run([*CLI, "ctl", "--shard", shard, "--config", str(conf), "status", "--json"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_all_shards_run_is_ready_when_both_shards_are(shortdir):
    name = unique.name("sdsh")
    conf = shortdir / "shards.toml"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("two shards need two CPUs of their own")
    conf.write_text(SHARDS.format(name=name, cpu_a=cpus[0], cpu_b=cpus[1]))
    empty = write_pcap(shortdir / "empty.pcap", [])
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    with under_notify(shortdir, [*CLI, "run", "--config", str(conf), "--nic", f"pcap:{empty}"],
                      unset=("WATCHDOG_PID", "WATCHDOG_USEC")) as (proc, ns):
        deadline = time.monotonic() + 90
        while not any(m.get("READY") == "1" for m in ns.messages):
            assert proc.poll() is None and time.monotonic() < deadline, "launcher exited or no READY=1"
            ns.collect(0.2)
        i = ns.wait_for("READY", "1", 1)
        assert ns.messages[i]["MAINPID"] == str(proc.pid) and ns.messages[i]["STATUS"] == "2 shards ready: a, b"
        for shard in ("a", "b"):  # ready means both shards serve their published tables
            st = _shard_status(conf, shard, env)
            assert st["generation"] >= 1 and st["vips"] == 1, st
        # only the launcher speaks to "systemd": no shard's own READY reached it
        assert all(m.get("MAINPID") in (None, str(proc.pid)) for m in ns.messages), ns.messages
        proc.send_signal(signal.SIGHUP)
        j = ns.wait_for("RELOADING", "1", 10, after=i + 1)
        k = ns.wait_for("READY", "1", 60, after=j)
        assert ns.messages[k]["STATUS"] == "reloaded", ns.messages[k]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        ns.wait_for("STOPPING", "1", 5, after=k)
        print(f"two shards stopped in {time.monotonic() - t0:.2f} s")
