"""tcp:// needs CURVE: listed client keys get in, anyone else gets nothing."""

from __future__ import annotations

import pytest

from maglev.control import curve
from maglev.control.client import ControlClient, ControlTimeout
from maglev.control.protocol import Reply
from maglev.control.server import ControlServer
from maglev.errors import ControlError, MaglevError


@pytest.fixture
def keys(shortdir):
    srv_pub, srv_sec = curve.generate(shortdir, "server")
    ok_pub, ok_sec = curve.generate(shortdir, "ops")
    _, bad_sec = curve.generate(shortdir, "intruder")
    ok_key = curve.load_keypair(ok_sec).public.decode()
    allow = shortdir / "authorized_keys"
    allow.write_text(f"# who may control maglev\n{ok_key} ops team laptop\n")
    return {"srv_pub": srv_pub, "srv_sec": srv_sec, "ok_sec": ok_sec, "bad_sec": bad_sec, "allow": allow}


def echo(req):
    return Reply(req.id, True, result={"op": req.op})


def test_listed_key_is_served_unlisted_is_not(keys):
    with ControlServer(echo, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                       server_secret_key_file=str(keys["srv_sec"]),
                       authorized_keys_file=str(keys["allow"])) as srv:
        import threading

        stop = threading.Event()
        t = threading.Thread(target=lambda: [srv.poll(20) for _ in iter(stop.is_set, True)], daemon=True)
        t.start()
        try:
            ep = srv.bound_endpoint
            with ControlClient(ep, timeout=5, client_key_file=str(keys["ok_sec"]),
                               server_key=str(keys["srv_pub"])) as c:
                assert c.call("status") == {"op": "status"}
            with ControlClient(ep, timeout=0.5, client_key_file=str(keys["bad_sec"]),
                               server_key=str(keys["srv_pub"])) as c:
                with pytest.raises(ControlTimeout):
                    c.call("status")
            assert srv.allow.denied >= 1
            with pytest.raises(MaglevError, match="needs CURVE"):
                ControlClient(ep)
        finally:
            stop.set()
            t.join(5)


def test_bad_key_files_are_clear_errors(keys, shortdir):
    bad = shortdir / "bad_allow"
    bad.write_text("not-a-key\n")
    with pytest.raises(ControlError, match="not a 40-character Z85"):
        curve.load_authorized_keys(bad)
    empty = shortdir / "empty_allow"
    empty.write_text("# nobody\n")
    with pytest.raises(ControlError, match="lists no client keys"):
        curve.load_authorized_keys(empty)
    with pytest.raises(ControlError, match="holds no secret key"):
        curve.load_keypair(keys["srv_pub"])
    with pytest.raises(ControlError, match="cannot read"):
        ControlServer(echo, "tcp://127.0.0.1:*", server_secret_key_file=str(shortdir / "missing"),
                      authorized_keys_file=str(keys["allow"]))
