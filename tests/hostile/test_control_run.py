"""Hostile control messages against a whole ``maglev run`` under load, not a lone actor.

tests/control/test_fuzz_wire.py throws every kind of bad message (random bytes and msgpack,
each envelope field missing or of a wrong type, wrong versions, huge bodies, deep nesting,
truncated requests, multi-part frames, unknown ops, every op with wrong arguments) at a
config-manager actor on its own.  Here the same generator aims at the public control socket
of a real run (generator NIC, packet workers, controller, health prober): every answer is
an error reply of a known code (or a counted drop), never ``internal``; a batch with no
accepted change leaves the generation and the state file as they were; afterwards the run
still serves the same config, is healthy and forwards, no actor restarted, every frame is
accounted for and the log has no traceback."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import zmq

from maglev.control.client import ControlClient
from maglev.control.protocol import MAX_MESSAGE_BYTES
from maglev.rings.conntrack_shm import remove_recorded
from maglev.testing import unique
from maglev.testing.wait import wait_until
from tests.control.test_fuzz_wire import CONFIG, LiveActor, RandPick, bad_message, serve_batch

pytestmark = pytest.mark.slow


class RunSocket(LiveActor):
    """LiveActor's client half (exchange, call, snapshot) on a running ``maglev run``."""

    def __init__(self, endpoint: str, state: Path):  # no actor process of its own to start
        self.endpoint, self.state, self._ids = endpoint, state, 0
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 64 * MAX_MESSAGE_BYTES)
        self.sock.connect(endpoint)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def test_hostile_control_messages_against_a_live_run(shortdir):
    from maglev.config import Config, dump_toml

    name = unique.name("hc")
    conf = shortdir / "maglev.toml"
    conf.write_text(dump_toml(Config.from_dict({**CONFIG, "instance": {**CONFIG["instance"], "name": name}})))
    control = f"ipc://{shortdir}/ctl.sock"
    env = {**os.environ, "MAGLEV_STATE_DIR": str(shortdir / "state"), "MAGLEV_RUN_DIR": str(shortdir / "run")}
    out_f, log = shortdir / "out.json", shortdir / "run.log"
    with open(out_f, "w") as out, open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from maglev_cli.main import main; main()", "run", "--config", str(conf),
             "--workers", "1", "--control", control, "--json", "--nic", "gen:seconds=150,flows=100,rate=10000"],
            stdout=out, stderr=err, env=env, start_new_session=True)  # fmt: skip
    sock = None
    try:
        wait_until(lambda: (shortdir / "ctl.sock").exists() or proc.poll() is not None, 60, "the control socket")
        with ControlClient(control, timeout=10) as c:
            def healthy() -> bool:
                try:
                    return bool((c.call("status", timeout=2).get("controller") or {}).get("healthy"))
                except Exception:
                    return False

            wait_until(healthy, 60, "a healthy run")
            accepted = c.call("get-config")["config"]
            sock = RunSocket(control, shortdir / "state" / name / "state.json")
            counts: dict[str, int] = {"sent": 0, "accepted": 0}
            p = RandPick(int.from_bytes(secrets.token_bytes(4), "big"))
            # explicit envelope versions first, then 1000 generated messages
            for v in (0, 2, -1, 2**64 - 1, "1", None, 1.0, True, [1], {"v": 1}):
                r = sock.exchange([msgpack.packb({"v": v, "id": "v", "op": "status", "args": {}})])
                assert r is not None and not r["ok"] and r["error"]["code"] in ("unsupported-version", "malformed"), r
            for i in range(20):
                serve_batch(sock, [bad_message(p) for _ in range(50)], counts, pipelined=i % 2 == 1)
            assert counts["sent"] >= 900, counts
            refused = {k: n for k, n in counts.items() if k not in ("sent", "accepted")}
            assert sum(refused.values()) > counts["sent"] // 2 and len(refused) >= 4, counts
            c.call("resume-instance")  # a generated drain-instance may have been accepted
            c.call("replace-config", {"config": CONFIG | {"instance": accepted["instance"]}, "force": True})
            assert c.call("get-config")["config"] == accepted
            wait_until(healthy, 30, "a healthy run after the hostile messages")
            n0 = c.call("stats")["totals"]["forwarded"]
            wait_until(lambda: c.call("stats")["totals"]["forwarded"] > n0 + 1000, 20, "traffic flowing")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        s = json.loads(out_f.read_text())
        assert s["pool"]["ok"] and all(n == 0 for n in s["restarts"].values()), (s["pool"], s["restarts"])
        text = log.read_text(errors="replace")
        assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    finally:
        if sock is not None:
            sock.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        remove_recorded(str(shortdir / "state"))
