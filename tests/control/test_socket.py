"""The control socket end to end over ipc://: ops, errors, events, hostile input."""

from __future__ import annotations

import os
import socket
import stat
import time

import msgpack
import pytest
import zmq

from maglev.control.client import ControlClient, ControlTimeout, EventSubscriber
from maglev.control.protocol import ProtocolError, decode_reply
from maglev.control.server import ControlServer
from maglev.errors import ControlError

VIP = "203.0.113.10:80/tcp"


def test_ipc_socket_is_private(served):
    p = served.server.bound_endpoint[len("ipc://"):]
    st = os.stat(p)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode) == 0o700


def test_call_and_error_reply(served):
    with ControlClient(served.server.bound_endpoint, timeout=5) as c:
        assert c.call("status")["generation"] == 1
        r = c.call("set-weight", {"vip": VIP, "backend": "198.18.1.1", "weight": 3})
        assert r["generation"] == 2 and r["confirmed"]
        with pytest.raises(ProtocolError) as ei:
            c.call("set-weight", {"vip": VIP, "backend": "198.18.1.1", "weight": 99999999})
        assert ei.value.code == "bad-args" and ei.value.field == "weight"
        with pytest.raises(ProtocolError) as ei:
            c.call("add-backend", {"vip": VIP, "backend": {"address": "198.18.1.77", "weight": "heavy"}})
        assert ei.value.code == "invalid-config" and ei.value.field == "vip[0].backend[3].weight"
        assert c.call("status")["generation"] == 2


def test_events_are_published(served):
    ep = served.server.bound_events_endpoint
    with EventSubscriber(ep) as sub, ControlClient(served.server.bound_endpoint) as c:
        time.sleep(0.2)  # PUB/SUB: let the subscription reach the publisher (slow joiner)
        c.call("drain", {"vip": VIP, "backend": "198.18.1.2"})
        c.call("health-report", {"reports": [{"vip": VIP, "backend": "198.18.1.1", "up": False, "detail": "refused"}]})
        got = []
        while (ev := sub.recv(1.0)) is not None:
            got.append(ev)
    topics = [t for t, _ in got]
    assert topics == ["generation", "config", "generation", "health"]
    assert got[3][1]["backend"] == "198.18.1.1" and got[3][1]["up"] is False and got[3][1]["v"] == 1


def test_req_socket_is_served_too(served):
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(served.server.bound_endpoint)
        s.send(msgpack.packb({"v": 1, "id": "r1", "op": "vips", "args": {}}))
        assert s.poll(5000)
        r = decode_reply(s.recv())
        assert r.ok and r.id == "r1" and r.result[0]["vip"] == VIP
    finally:
        s.close(0)
        ctx.term()


@pytest.mark.parametrize(
    "body,code",
    [
        (b"\xc1", "malformed"),
        (b"", "malformed"),
        (msgpack.packb([1, 2, 3]), "malformed"),
        (msgpack.packb({"v": 2, "id": 1, "op": "status"}), "unsupported-version"),
        (msgpack.packb({"v": 1, "id": 1, "op": 5}), "malformed"),
        (msgpack.packb({"v": 1, "id": 1, "op": "status", "args": [1]}), "malformed"),
        (msgpack.packb({"v": 1, "id": 1, "op": "status", "extra": 1}), "malformed"),
        (msgpack.packb({"v": 1, "id": 1.5, "op": "status"}), "malformed"),
        (msgpack.packb({"v": True, "id": 1, "op": "status"}), "malformed"),
        (msgpack.packb({"v": 1, "id": 1, "op": "nope"}), "unknown-op"),
        (msgpack.packb({"v": 1, "id": 1, "op": "status"}) + b"\x00", "malformed"),
        (msgpack.packb({1: 2}), "malformed"),
    ],
)
def test_garbage_gets_an_error_reply(served, body, code):
    with ControlClient(served.server.bound_endpoint) as c:
        c.send_raw([body])
        frames = c.recv_raw(5)
        assert frames is not None and len(frames) == 1
        r = decode_reply(frames[0])
        assert not r.ok and r.error["code"] == code and r.error["message"]
        assert c.call("status")["generation"] == 1  # still serving, nothing changed


def test_multi_frame_garbage_is_dropped_and_counted(served):
    with ControlClient(served.server.bound_endpoint) as c:
        c.send_raw([b"a", b"b", b"c"])
        assert c.recv_raw(0.3) is None
        assert c.call("status")["generation"] == 1
    assert served.server.stats.dropped_frames == 1


def test_oversized_message_drops_the_peer_not_the_server(served):
    with ControlClient(served.server.bound_endpoint, timeout=0.5) as c:
        big = msgpack.packb({"v": 1, "id": 1, "op": "replace-config", "args": {"config": {"x": "y" * (2 << 20)}}})
        c.send_raw([big])
        assert c.recv_raw(0.5) is None
    with ControlClient(served.server.bound_endpoint) as c2:
        assert c2.call("status")["generation"] == 1


def test_late_reply_is_not_taken_for_the_next(served, publisher):
    publisher.stall(0)
    served.mgr.confirm_timeout = 0.6
    with ControlClient(served.server.bound_endpoint, timeout=0.2) as c:
        with pytest.raises(ControlTimeout):
            c.call("drain", {"vip": VIP, "backend": "198.18.1.1"})
        publisher.stall(0, False)
        c.timeout = 5
        s = c.call("status")
        assert "generation" in s and "changed" not in s


def test_refuses_to_steal_a_live_socket(served):
    with pytest.raises(ControlError, match="in use"):
        ControlServer(lambda r: None, served.server.bound_endpoint)


def test_stale_socket_file_is_replaced(shortdir):
    path = shortdir / "c.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on: a crashed server's leftover
    with ControlServer(lambda r: None, f"ipc://{path}") as srv:
        assert srv.bound_endpoint.endswith("c.sock")
    assert not path.exists()  # close removes it


def test_non_socket_file_is_not_replaced(shortdir):
    path = shortdir / "c.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(lambda r: None, f"ipc://{path}")
    assert path.read_text() == "precious"


def test_tcp_without_keys_is_refused():
    with pytest.raises(ControlError, match="without CURVE"):
        ControlServer(lambda r: None, "tcp://127.0.0.1:0")


def test_client_reports_missing_server():
    with pytest.raises(ControlTimeout, match="is maglev running"):
        ControlClient("ipc:///tmp/definitely-not-here-mgc/control.sock")


def test_deeply_nested_arguments_are_refused(served):
    deep: object = "x"
    for _ in range(900):
        deep = {"health": deep}
    body = msgpack.packb({"v": 1, "id": 9, "op": "update-vip", "args": {"vip": VIP, "set": {"health": deep}}})
    with ControlClient(served.server.bound_endpoint) as c:
        c.send_raw([body])
        frames = c.recv_raw(5)
        r = decode_reply(frames[0])
        assert not r.ok and r.error["code"] in ("bad-args", "invalid-config", "malformed"), r.error
        assert c.call("status")["generation"] == 1
