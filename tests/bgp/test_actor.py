"""The BGP speaker actor: mailbox commands in-process, SIGTERM -> CEASE as a real process."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from maglev.actors.base import ActorSpec
from maglev.actors.bgp_speaker import BgpSpeakerActor
from maglev.bgp import messages as m
from maglev.testing.ports import free_port


def params(port: int) -> dict:
    return {
        "bgp": {
            "local_asn": 64513, "router_id": "198.18.0.10", "listen_port": port, "listen_address": "127.0.0.1",
            "connect_retry_time": 1, "peer": [{"address": "127.0.0.1", "asn": 64512, "passive": True}],
        }
    }  # fmt: skip


class BlockingPeer:
    """A scripted neighbour on a plain blocking socket (the actor owns the event loop)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def recv(self) -> m.Message:
        header = self._exact(19)
        length, _ = m.check_header(header)
        return m.parse_message(header + self._exact(length - 19))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def expect(self, cls):
        for _ in range(20):
            msg = self.recv()
            if isinstance(msg, cls):
                return msg
        raise AssertionError(f"no {cls.__name__}")

    def handshake(self) -> None:
        self.expect(m.Open)
        self.sock.sendall(bytes(m.Open.build(64512, 90, "198.18.0.1")) + bytes(m.Keepalive()))
        self.expect(m.Keepalive)


def pump_until(actor: BgpSpeakerActor, done: threading.Event, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done.is_set():
        assert time.monotonic() < deadline, "scripted peer did not finish"
        actor.wait(0.02)


def test_actor_commands_and_events(tmp_path):
    port = free_port()
    spec = ActorSpec(name="bgp", target="maglev.actors.bgp_speaker:BgpSpeakerActor", run_dir=str(tmp_path), params=params(port))
    actor = BgpSpeakerActor(spec)
    sent: list[tuple[str, dict]] = []
    actor.send = lambda type_, **body: sent.append((type_, body))  # no supervisor here
    actor.setup()
    got: dict = {}
    done = threading.Event()

    def peer_side() -> None:
        try:
            p = BlockingPeer(port)
            p.handshake()
            got["update"] = p.expect(m.Update)
            got["withdraw"] = p.expect(m.Update)
            p.sock.close()
        except Exception as exc:  # reported by the assertions below
            got["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=peer_side, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not any(b.get("new") == "Established" for ty, b in sent if ty == "bgp.event"):
            assert time.monotonic() < deadline and "error" not in got, (sent, got)
            actor.wait(0.02)
        actor.handle({"type": "bgp.announce", "prefix": "203.0.113.10/32", "id": 7})
        while "update" not in got and not done.is_set():
            actor.wait(0.02)
        actor.handle({"type": "bgp.withdraw", "prefix": "203.0.113.10/32"})
        pump_until(actor, done)
        t.join(timeout=5)
        assert "error" not in got, got
        assert got["update"].nlri == (ipaddress.ip_network("203.0.113.10/32"),)
        assert got["withdraw"].withdrawn == (ipaddress.ip_network("203.0.113.10/32"),)
        replies = [b for ty, b in sent if ty == "bgp.reply"]
        assert replies[0] == {"op": "bgp.announce", "ok": True, "prefix": "203.0.113.10/32", "changed": True, "id": 7}
        routes = [b for ty, b in sent if ty == "bgp.event" and b["event"] == "bgp.route"]
        assert [r["action"] for r in routes[:2]] == ["announce", "withdraw"]
        # Bad commands get an error reply and change nothing.
        assert actor.command({"type": "bgp.announce", "prefix": "203.0.113.10/24"})["ok"] is False
        assert actor.command({"type": "bgp.announce"})["error"] == "bgp.announce needs a 'prefix' string"
        assert actor.command({"type": "bgp.nonsense"})["ok"] is False
        state = actor.command({"type": "bgp.state"})
        assert state["ok"] and state["announced"] == [] and state["peers"][0]["peer"] == "127.0.0.1"
        assert actor.stats()["bad_commands"] == 3
    finally:
        actor.drain()
        actor.teardown()


def test_actor_process_sends_cease_on_sigterm(tmp_path):
    port = free_port()
    params_ = params(port)
    params_["announce"] = ["203.0.113.10/32"]
    spec = ActorSpec(name="bgp", target="maglev.actors.bgp_speaker:BgpSpeakerActor", run_dir=str(tmp_path), params=params_)
    proc = subprocess.Popen([sys.executable, "-m", "maglev.actors.launch", spec.to_json()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                p = BlockingPeer(port)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no listener"
                time.sleep(0.1)
        p.handshake()
        assert p.expect(m.Update).nlri == (ipaddress.ip_network("203.0.113.10/32"),)
        os.kill(proc.pid, signal.SIGTERM)
        n = p.expect(m.Notification)
        assert (n.code, n.subcode) == (6, 2)
        assert b"maglev stopping" in n.data
        assert proc.wait(timeout=10) == 0
        p.sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()


def test_actor_rejects_a_bad_config(tmp_path):
    import pytest

    from maglev.errors import ConfigError

    bad = {"bgp": {"local_asn": 64513, "router_id": "nope", "peer": [{"address": "127.0.0.1", "asn": 1, "hold_time": 2}]}}
    actor = BgpSpeakerActor(ActorSpec(name="bgp", target="x:Y", run_dir=str(tmp_path), params=bad))
    with pytest.raises(ConfigError) as info:
        actor.setup()
    assert "bgp.router_id: 'nope' is not an IP address" in info.value.problems
    assert "bgp.peer[0].hold_time: must be 0 or at least 3 seconds (RFC 4271 4.2)" in info.value.problems


def test_actor_def_for_maglev_run(tmp_path):
    from maglev.actors.bgp_speaker import actor_def
    from maglev.actors.pipeline import PipelineOptions

    no_bgp = tmp_path / "none.toml"
    no_bgp.write_text("[bgp]\nlocal_asn = 0\n")
    assert actor_def(PipelineOptions(config_path=str(no_bgp)), "r") is None
    with_bgp = tmp_path / "bgp.toml"
    with_bgp.write_text('[bgp]\nlocal_asn = 64513\nrouter_id = "198.18.0.2"\n[[bgp.peer]]\naddress = "198.18.0.1"\nasn = 64512\n')
    d = actor_def(PipelineOptions(config_path=str(with_bgp)), "r")
    assert d.target == "maglev.actors.bgp_speaker:BgpSpeakerActor" and d.params == {"config_file": str(with_bgp)}
    assert d.stop_group < 0  # withdraws before the data path stops
