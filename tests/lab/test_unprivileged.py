"""Issue 18's "done when": the forwarder runs in the lab as an unprivileged user (``nobody``)
holding only the capabilities the shipped unit lists, serves HTTP through the VIP, takes a
changed config on SIGHUP, and stops cleanly on SIGTERM -- with systemd's notify protocol.

This machine's interpreter lives under /root (mode 0700) and /tmp is 0700 too, so the
test runs a copy of what a run imports from a folder every user can read, with an
interpreter of the same version that user can execute (maglev/testing/unprivileged.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from maglev.lab.topology import VIP_V4, http_get
from maglev.service import privileges as pv
from maglev.testing import unprivileged as up
from maglev.testing.notify import NotifySocket

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "systemd" / "maglev.service"


def unit_caps() -> list[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("AmbientCapabilities="):
            return line.split("=", 1)[1].split()
    raise AssertionError("the unit lists no AmbientCapabilities")


def backends_seen(client_ns: str, n: int) -> Counter:
    seen: Counter = Counter()
    for _ in range(n):
        status, body = http_get(client_ns, VIP_V4, timeout=2.0)
        assert status == 200, body
        seen[body.strip().removeprefix("backend=")] += 1
    return seen


@pytest.mark.slow
def test_forwarder_as_nobody_with_the_units_capabilities(make_lab, leak_record):
    if reason := up.why_no_unprivileged():
        pytest.skip(reason)
    lab = make_lab(encap="gre", backends=3, forwarder=False)
    uid, gid = up.user_ids()
    shared = up.shared_tmpdir()
    proc = None
    notify = None
    try:
        py = up.pick_interpreter()
        if py is None:
            pytest.skip("no interpreter of this Python version that user nobody can execute")
        lib = up.make_runtime(shared, ROOT)
        private = shared / "private"  # the service user's own folders, 0700
        for d in (private, private / "run", private / "state"):
            d.mkdir(mode=0o700)
            os.chown(d, uid, gid)
        conf = shared / "maglev.toml"
        text = Path(lab.state["config"]).read_text()
        conf.write_text(text)
        conf.chmod(0o644)
        notify = NotifySocket(shared / "notify")
        os.chmod(shared / "notify", 0o777)  # the service user sends to it
        caps = unit_caps()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(lib), "HOME": str(private),
               "XDG_RUNTIME_DIR": str(private / "run"), "MAGLEV_RUN_DIR": str(private / "run"),
               "MAGLEV_STATE_DIR": str(private / "state"), "NOTIFY_SOCKET": str(shared / "notify"),
               "WATCHDOG_USEC": "2000000"}
        # the leak guard's record for this run (nobody cannot write the test's own): what the
        # run leaves -- regions, run folder, processes, the tables kept for adoption -- is seen
        rec = leak_record(uid, gid)
        if rec:
            env["MAGLEV_RECORD"] = rec
        log_path = lab.state_dir / "logs" / "maglev-nobody.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.state["maglev"]["ns"], *up.setpriv_argv(caps), py, "-P", "-c",
                 "from maglev_cli.main import main; main()", "run", "--config", str(conf),
                 "--nic", "afpacket:eth0", "--workers", "1", "--json", "-v"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True)

        def tail() -> str:
            return log_path.read_text()[-3000:]

        try:
            i = notify.wait_for("READY", "1", 90)
        except AssertionError:
            raise AssertionError(tail()) from None
        assert notify.messages[i]["MAINPID"] == str(proc.pid)

        # Who it runs as, and with what: uid nobody; CAP_NET_BIND_SERVICE (no BGP peers
        # here) dropped by maglev itself; CAP_NET_RAW + CAP_IPC_LOCK in every process.
        import psutil

        kept = pv.mask({"CAP_NET_RAW", "CAP_IPC_LOCK"})
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 6  # supervisor, steering, worker, muxer, config, health (+ standby)
        bare = 0
        for p in tree:
            assert p.uids().real == uid and p.uids().effective == uid, p
            s = pv.cap_sets(p.pid)
            name = " ".join(p.cmdline())
            # dropped all after setup (the prober opened its raw sockets for tunnel checks first)
            if re.search(r'"name": "(worker-\d+|config|health)"', name):
                assert s["CapEff"] == 0 and s["CapPrm"] == 0, (name[:120], hex(s["CapEff"]))
                bare += 1
            else:  # supervisor, steering, muxer, standby
                assert s["CapEff"] == kept and s["CapPrm"] == kept, (name[:120], hex(s["CapEff"]))
        assert bare == 3
        dropped = [ln for ln in log_path.read_text().splitlines() if "capabilities dropped" in ln]
        assert len(dropped) == 1 and "kept=CAP_NET_RAW,CAP_IPC_LOCK" in dropped[0] and f"uid={uid}" in dropped[0]
        # Its run folder, control socket and state are the service user's, private.
        run_dir = private / "run" / "lab"
        sock = run_dir / "control.sock"
        assert sock.exists(), sorted(os.listdir(private / "run"))
        for path, mode in ((run_dir, 0o700), (private / "state" / "lab", 0o700)):
            st = os.stat(path)
            assert st.st_uid == uid and st.st_mode & 0o777 == mode, (path, oct(st.st_mode))
        assert os.stat(sock).st_uid == uid and os.stat(sock).st_mode & 0o077 == 0
        for f in (private / "state" / "lab").rglob("*"):
            if f.is_file():
                assert os.stat(f).st_uid == uid and os.stat(f).st_mode & 0o077 == 0, (f, oct(os.stat(f).st_mode))

        # HTTP through the VIP reaches every backend.
        client = lab.state["client"]["ns"]
        before = backends_seen(client, 30)
        assert set(before) == {"be1", "be2", "be3"}, before

        # SIGHUP with be1's weight at 0: reloaded, and new connections avoid be1.
        new_text, n = re.subn(r'(name = "be1",?\s*weight = )1\b', r"\g<1>0", text)
        assert n == 4  # be1 in each VIP (IPv4, IPv6; tcp, udp)
        conf.write_text(new_text)
        proc.send_signal(signal.SIGHUP)
        j = notify.wait_for("RELOADING", "1", 10, after=i + 1)
        k = notify.wait_for("READY", "1", 60, after=j)
        assert notify.messages[k].get("STATUS") == "reloaded", (notify.messages[k], tail())
        after = backends_seen(client, 30)
        assert "be1" not in after and sum(after.values()) == 30, after

        # SIGTERM: STOPPING=1 and a clean exit.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, tail()
        notify.wait_for("STOPPING", "1", 5, after=k)
        assert "Traceback" not in log_path.read_text(), tail()
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if notify is not None:
            notify.close()
        # The connection tables the run kept for adoption are in its record (leak_record):
        # the leak guard drops them.
        shutil.rmtree(shared, ignore_errors=True)
