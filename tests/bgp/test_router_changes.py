"""A router that resets our connection mid-UPDATE, or changes its BGP identifier or its AS
between sessions (session 10), with BIRD in a namespace (tests/bgp/conftest.py)."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIP4 = "203.0.113.10"


def _peer(sp) -> dict:
    return sp.state(timeout=30)["peers"][0]


def _up(lab, sp, timeout: float = 30) -> None:
    sp.wait_established(timeout)
    lab.wait_until(lambda: "Established" in lab.bird_state(), timeout, "BIRD Established")
    lab.wait_until(lambda: VIP4 in lab.kernel_routes(), timeout, "VIP in the router's kernel")


def _steady(lab, sp, seconds: float) -> None:
    """No new session on either side for ``seconds``."""
    bird, ours = lab.bird_sessions(), _peer(sp)["established"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert lab.bird_sessions() == bird and "Established" in lab.bird_state(), lab.bird_state()
        time.sleep(0.2)
    p = _peer(sp)
    assert p["established"] == ours and p["state"] == "Established", p


def test_router_resets_the_connection_mid_update(bird_lab):
    """3000 VIPs announced and the router's socket destroyed (`ss -K`: a RST) while our
    UPDATEs flow: one new session, and every VIP reaches the router's kernel."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    vips = [f"10.9.{i // 256}.{i % 256}/32" for i in range(3000)]
    for v in vips:
        sp.command(f"announce {v}")
    lab.wait_until(lambda: _peer(sp)["updates_out"] > 1, 10, "UPDATEs flowing")
    assert lab.router.exec("ss", "-K", "dst", "198.18.0.2", check=False).returncode == 0
    lab.wait_until(lambda: lab.kernel_routes().count("\n") >= 3001, 60, "every VIP in the router's kernel")
    _steady(lab, sp, 2.0)
    assert _peer(sp)["established"] <= 2 and lab.bird_sessions() <= 2


def test_router_changes_its_identifier_then_its_as(bird_lab):
    """BIRD reconfigured with a new router id: a new session under the new identifier.
    Then with another AS: refused with Bad Peer AS (2/2, what BIRD's log shows), no
    session; back to its AS: the session and the VIP return within seconds and stay."""
    lab = bird_lab
    lab.start_bird()
    sp = lab.start_speaker(announce=(f"{VIP4}/32",))
    _up(lab, sp)
    conf = lab.tmp / "bird.conf"
    text = conf.read_text()
    conf.write_text(text.replace("router id 198.18.0.1;", "router id 198.18.0.77;"))
    assert lab.birdc("configure").returncode == 0
    lab.wait_until(lambda: (p := _peer(sp))["router_id"] == "198.18.0.77" and p["state"] == "Established", 30, "new id")
    _up(lab, sp)
    conf.write_text(text.replace("local as 64512;", "local as 64999;"))
    assert lab.birdc("configure").returncode == 0
    lab.wait_until(lambda: "Received: Bad peer AS" in lab.bird_state(), 30, "BIRD refused with Bad peer AS")
    lab.wait_until(lambda: VIP4 not in lab.kernel_routes(), 10, "VIP gone while the AS is wrong")
    assert _peer(sp)["state"] != "Established"
    conf.write_text(text)
    assert lab.birdc("configure").returncode == 0
    _up(lab, sp, timeout=20)
    _steady(lab, sp, 3.0)
