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
from collections.abc import Callable

from maglev.actors.base import ActorSpec
from maglev.actors.bgp_speaker import BgpSpeakerActor
from maglev.actors.sched import BGP_NICE
from maglev.bgp import messages as m
from maglev.testing.ports import free_port


def params(port: int) -> dict:
    return {
        "bgp": {
            "local_asn": 64513, "router_id": "198.18.0.10", "listen_port": port, "listen_address": "127.0.0.1",
            "connect_retry_time": 1, "peer": [{"address": "127.0.0.1", "asn": 64512, "passive": True}],
        },
        # An actor set up inside this test process must not renice it (and every process it
        # starts after); the actor processes below run at the default, BGP_NICE.
        "nice": 0,
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


def actor_spec(tmp_path, params_: dict, **kw) -> ActorSpec:
    """The BGP speaker actor's spec with ``params_`` (kw: more ActorSpec fields)."""
    return ActorSpec(name="bgp", target="maglev.actors.bgp_speaker:BgpSpeakerActor", run_dir=str(tmp_path),
                     params=params_, **kw)


def peer_thread(port: int, script: Callable[[BlockingPeer, dict], None]) -> tuple[dict, threading.Event,
                                                                                threading.Thread]:
    """Start ``script(peer, got)`` on a BlockingPeer connected to ``port`` in a daemon
    thread; returns (got, done, the thread): an exception lands in ``got["error"]`` (for
    the test's assertions), ``done`` is set when the script ended either way."""
    got: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            script(BlockingPeer(port), got)
        except Exception as exc:  # reported by the assertions of the test
            got["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return got, done, t


def test_actor_commands_and_events(tmp_path):
    port = free_port()
    actor = BgpSpeakerActor(actor_spec(tmp_path, params(port)))
    sent: list[tuple[str, dict]] = []
    actor.send = lambda type_, **body: sent.append((type_, body))  # no supervisor here
    actor.setup()

    def peer_side(p: BlockingPeer, got: dict) -> None:
        p.handshake()
        got["update"] = p.expect(m.Update)
        got["withdraw"] = p.expect(m.Update)
        p.sock.close()

    got, done, t = peer_thread(port, peer_side)
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
    del params_["nice"]  # its own process: the default
    spec = actor_spec(tmp_path, params_)
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
        if os.geteuid() == 0:  # above packet work (maglev.actors.sched.BGP_NICE); root may lower it
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) == BGP_NICE
        # SIGHUP (`systemctl kill -s HUP` reaches every process of the service) is ignored:
        # its default action would end the process and reset the session without a CEASE.
        os.kill(proc.pid, signal.SIGHUP)
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
    assert d.target == "maglev.actors.bgp_speaker:BgpSpeakerActor" and d.params == {"config_file": str(with_bgp), "wait_ready": True}
    assert d.stop_group < 0  # withdraws before the data path stops


class Mailbox:
    """The supervisor's side of an actor's mailbox: a ZeroMQ ROUTER on ipc:// in tmp_path."""

    def __init__(self, tmp_path):
        import zmq

        self.ctx = zmq.Context(1)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"ipc://{tmp_path}/mailbox"
        self.sock.bind(self.endpoint)

    def recv(self, want: str, timeout: float = 10) -> dict:
        import msgpack

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {want} from the actor"
            if self.sock.poll(int(left * 1000)):
                _ident, raw = self.sock.recv_multipart()
                msg = msgpack.unpackb(raw, raw=False)
                if msg.get("type") == want:
                    return msg

    def send(self, **msg) -> None:
        import msgpack

        self.sock.send_multipart([b"bgp", msgpack.packb({"v": 1, **msg}, use_bin_type=True)])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def start_actor(tmp_path, mailbox: Mailbox, params_: dict, incarnation: int = 0) -> subprocess.Popen:
    spec = ActorSpec(
        name="bgp", target="maglev.actors.bgp_speaker:BgpSpeakerActor", run_dir=str(tmp_path), mailbox=mailbox.endpoint,
        params=params_, parent_pid=os.getpid(), incarnation=incarnation,
    )
    return subprocess.Popen([sys.executable, "-m", "maglev.actors.launch", spec.to_json()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def connect_peer(port: int, proc: subprocess.Popen) -> BlockingPeer:
    deadline = time.monotonic() + 15
    while True:
        try:
            return BlockingPeer(port)
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "no listener"
            time.sleep(0.05)


def test_command_reaches_the_wire_at_once(tmp_path):
    """Mailbox command -> UPDATE read by a peer on 127.0.0.1, for announce and withdraw,
    and SIGTERM -> CEASE.  The actor waits on its mailbox and its sockets together, so
    each is a few milliseconds (it was ~400 ms with fixed 0.5 s idle slices).  The bounds
    are generous for a loaded 2-core machine; the real figures are printed."""
    port = free_port()
    mb = Mailbox(tmp_path)
    proc = start_actor(tmp_path, mb, params(port))
    try:
        mb.recv("hello")
        p = connect_peer(port, proc)
        p.handshake()
        p.sock.settimeout(5)
        lat: dict[str, list[float]] = {"announce": [], "withdraw": []}
        for i in range(20):
            prefix = f"203.0.113.{10 + i}/32"
            for op in ("announce", "withdraw"):
                t0 = time.perf_counter()
                mb.send(type=f"bgp.{op}", prefix=prefix)
                u = p.expect(m.Update)
                lat[op].append((time.perf_counter() - t0) * 1000)
                got = u.nlri if op == "announce" else u.withdrawn
                assert got == (ipaddress.ip_network(prefix),)
            time.sleep(0.03)  # let the actor go idle again: the case that used to be slow
        t0 = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)
        n = p.expect(m.Notification)
        cease_ms = (time.perf_counter() - t0) * 1000
        assert (n.code, n.subcode) == (6, 2)
        assert proc.wait(timeout=10) == 0
        p.sock.close()
        for op, xs in lat.items():
            xs.sort()
            print(f"\n{op}: command -> UPDATE at the peer: median {xs[len(xs) // 2]:.2f} ms, max {xs[-1]:.2f} ms (n={len(xs)})")
            # Typically ~1 ms; the bounds leave room for a loaded 2-core machine and are
            # still far below the ~400 ms of the fixed 0.5 s idle slices.
            assert xs[len(xs) // 2] < 100 and xs[-1] < 300, xs
        print(f"SIGTERM -> CEASE at the peer: {cease_ms:.2f} ms")
        assert cease_ms < 300
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
        mb.close()


def test_restarted_actor_says_restarting_and_a_crash_sends_no_cease(tmp_path):
    """Graceful restart through the actor: incarnation 1 with graceful_restart_time set
    puts the Restarting bit in the OPEN and sends End-of-RIB after the routes; a crash
    (teardown without drain) closes the session without a NOTIFICATION, so a router
    keeps our routes for the restart time."""
    port = free_port()
    params_ = params(port)
    params_["bgp"]["graceful_restart_time"] = 30
    params_["announce"] = ["203.0.113.10/32"]
    actor = BgpSpeakerActor(actor_spec(tmp_path, params_, incarnation=1))
    actor.setup()

    def peer_side(p: BlockingPeer, got: dict) -> None:
        got["open"] = p.expect(m.Open)
        caps = (m.Capability.route_refresh(), m.Capability.graceful_restart(120, (m.IPV4_UNICAST,)), m.Capability.four_octet_as(64512))
        p.sock.sendall(bytes(m.Open(64512, 90, "198.18.0.1", caps)) + bytes(m.Keepalive()))
        p.expect(m.Keepalive)
        got["update"] = p.expect(m.Update)
        got["eor"] = p.expect(m.Update)
        got["sock"] = p

    got, done, t = peer_thread(port, peer_side)
    crashed = False
    try:
        pump_until(actor, done)
        t.join(timeout=5)
        assert "error" not in got, got
        flags, restart_time, fams = got["open"].graceful_restart
        assert flags & m.GR_RESTARTING and restart_time == 30 and fams[m.IPV4_UNICAST] & m.GR_FORWARDING
        assert got["update"].nlri == (ipaddress.ip_network("203.0.113.10/32"),)
        assert got["eor"].is_end_of_rib
        state = actor.command({"type": "bgp.state"})["peers"][0]["graceful_restart"]
        assert state == {"restart_time": 30, "restarting": False, "peer_supports": True, "peer_restart_time": 120}
        actor.teardown()  # the crash path: drain() did not run
        crashed = True
        p = got["sock"]
        p.sock.settimeout(5)
        rest = b""
        try:
            while chunk := p.sock.recv(4096):
                rest += chunk
        except ConnectionResetError:
            pass  # the abort resets the connection
        finally:
            p.sock.close()
        # Whatever came before the close (keepalives at most), never a NOTIFICATION.
        while rest:
            length, msg_type = m.check_header(rest[:19])
            assert msg_type != m.NOTIFICATION
            rest = rest[length:]
    finally:
        if not crashed:
            actor.drain()
            actor.teardown()


def test_reload_applies_only_what_changed_in_bgp(tmp_path):
    """``bgp.reload`` (the controller sends it on every new config generation): the same
    [bgp] changes nothing; a new next hop is re-announced on the same session (no
    NOTIFICATION, no new OPEN); a bad [bgp] keeps the running one."""
    port = free_port()
    conf = tmp_path / "maglev.toml"
    text = (f'[bgp]\nlocal_asn = 64513\nrouter_id = "198.18.0.10"\nlisten_port = {port}\nlisten_address = "127.0.0.1"\n'
            'connect_retry_time = 1\n[[bgp.peer]]\naddress = "127.0.0.1"\nasn = 64512\npassive = true\n')
    conf.write_text(text)
    mb = Mailbox(tmp_path)
    proc = start_actor(tmp_path, mb, {"config_file": str(conf), "announce": ["203.0.113.10/32"]})

    def reconfigured() -> dict:
        for _ in range(20):  # route events come the same way
            if (ev := mb.recv("bgp.event"))["event"] == "bgp.reconfigured":
                return ev
        raise AssertionError("no bgp.reconfigured event")
    try:
        mb.recv("hello")
        p = connect_peer(port, proc)
        p.handshake()
        p.sock.settimeout(5)
        assert p.expect(m.Update).get(m.A_NEXT_HOP) == m.NextHop("127.0.0.1")
        mb.send(type="bgp.reload", id=1)
        assert mb.recv("bgp.reply")["scheduled"] is True
        mb.send(type="bgp.state", id=2)
        assert mb.recv("bgp.reply")["peers"][0]["established"] == 1  # unchanged: nothing happened

        conf.write_text(text.replace("connect_retry_time = 1\n", 'connect_retry_time = 1\nnext_hop_ipv4 = "198.18.0.99"\n'))
        mb.send(type="bgp.reload", id=3)
        ev = reconfigured()
        assert ev["event"] == "bgp.reconfigured" and ev["resent"] is True and ev["restarted"] == []
        u = p.expect(m.Update)  # a NOTIFICATION or OPEN here would fail expect()
        assert u.get(m.A_NEXT_HOP) == m.NextHop("198.18.0.99")

        conf.write_text(text.replace("local_asn = 64513", "local_asn = 0"))  # BGP off: not applied live
        mb.send(type="bgp.reload", id=4)
        ev = reconfigured()
        assert ev["event"] == "bgp.reconfigured" and "local_asn" in ev["error"]
        mb.send(type="bgp.state", id=5)
        st = mb.recv("bgp.reply")["peers"][0]
        assert st["state"] == "Established" and st["established"] == 1 and st["notifications_out"] == 0
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        p.sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
        mb.close()
