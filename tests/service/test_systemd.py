"""systemd's notify protocol: the Notifier on its own, and `maglev run` under a fake
$NOTIFY_SOCKET: READY=1 only once the tables are published, the watchdog fed, SIGHUP
reloads all-or-nothing (a bad file changes nothing and the run goes on), SIGTERM stops."""

from __future__ import annotations

import os
import socket
import time

import pytest

from maglev.service.systemd import Notifier

from .conftest import CLI, NotifySocket, run_notify_scenario


def test_notifier_is_a_noop_outside_systemd():
    n = Notifier(env={})
    assert not n.enabled and n.ready() is False and n.watchdog() is False and n.sent == []


def test_notifier_sends_datagrams_and_paces_the_watchdog(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    try:
        n = Notifier(env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000"})
        assert n.ready(status="up") and n.status("x")
        assert n.watchdog(now=100.0) is True
        assert n.watchdog(now=100.4) is False  # within half the interval
        assert n.watchdog(now=100.6) is True
        ns.collect(1.0)
        assert ns.messages[0]["READY"] == "1" and ns.messages[0]["STATUS"] == "up"
        assert ns.messages[0]["MAINPID"] == str(os.getpid())
        assert [m.get("WATCHDOG") for m in ns.messages[2:]] == ["1", "1"]
        # WATCHDOG_PID naming another process: not ours to feed.
        other = Notifier(env={"NOTIFY_SOCKET": str(ns.path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
        assert other.watchdog(now=5.0) is False
        n.close()
    finally:
        ns.close()


def test_abstract_socket_name(tmp_path):
    name = f"@mgt-notify-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name[1:])
    n = Notifier(env={"NOTIFY_SOCKET": name})
    try:
        assert n.notify(STATUS="hi")
        s.settimeout(2)
        assert s.recv(100) == b"STATUS=hi"
    finally:
        n.close()
        s.close()


def test_a_receiver_that_does_not_read_never_blocks_the_notifier(tmp_path):
    """A datagram socket queues max_dgram_qlen (10) messages; a receiver that stops reading
    (systemd busy, a test waiting for the exit) must not block the supervisor's loop,
    which also runs SIGTERM's stop: found as `maglev run` hanging in WATCHDOG=1 for 120 s."""
    path = str(tmp_path / "deaf")
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(path)
    n = Notifier(env={"NOTIFY_SOCKET": path})
    n.STATE_RETRY_S = 0.3
    try:
        t0 = time.monotonic()
        sent = [n.notify(WATCHDOG=1) for _ in range(100)]
        assert time.monotonic() - t0 < 1.0  # none waited
        assert any(sent) and not all(sent) and n.dropped == sent.count(False)
        t0 = time.monotonic()
        assert n.stopping() is False  # a state change is retried, then given up
        assert 0.25 <= time.monotonic() - t0 < 2.0 and n.dropped == sent.count(False) + 1
        deaf.recv(100)  # room for one: the next state change goes out
        assert n.ready() is True
    finally:
        n.close()
        deaf.close()


@pytest.mark.slow
def test_run_under_a_notify_socket_ready_watchdog_reload_stop(tmp_path):
    run_notify_scenario(tmp_path, [*CLI, "run", "--workers", "2"])
