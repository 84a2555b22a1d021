"""The controller's rules with fake inputs (no processes): which prefixes to announce, when
the forwarder counts as healthy, when the data path counts as stalled."""

from __future__ import annotations

import pytest

from maglev.actors.controller import (
    ChildView,
    Controller,
    ControllerOptions,
    Debounce,
    StallDetector,
    actor_problems,
    desired,
    serving_addresses,
    vip_prefix,
)
from maglev.config import Config


def _config() -> Config:
    return Config.from_dict({
        "instance": {"source_ipv4": "198.18.2.2", "source_ipv6": "2001:db8:2::2"},
        "vip": [
            {"address": "203.0.113.10", "port": 80, "protocol": "tcp",
             "backend": [{"address": "198.18.2.11", "name": "be1"}, {"address": "198.18.2.12", "name": "be2"}]},
            {"address": "203.0.113.10", "port": 53, "protocol": "udp",
             "backend": [{"address": "198.18.2.13", "name": "dns1"}]},
            {"address": "203.0.113.20", "port": 80, "protocol": "tcp",
             "backend": [{"address": "198.18.2.21", "name": "w1", "weight": 0}]},
            {"address": "2001:db8:f::10", "port": 80, "protocol": "tcp",
             "backend": [{"address": "2001:db8:2::11", "name": "v6"}]},
        ]
    })  # fmt: skip


def test_vip_prefix_is_a_host_route():
    assert vip_prefix("203.0.113.10") == "203.0.113.10/32"
    assert vip_prefix("2001:db8:f:0::10") == "2001:db8:f::10/128"
    with pytest.raises(ValueError):
        vip_prefix("not-an-address")


def test_serving_needs_one_backend_up_with_weight():
    cfg = _config()
    s = serving_addresses(cfg, set())
    # 203.0.113.20's only backend is drained (weight 0): it cannot take a new flow.
    assert s == {"203.0.113.10/32": True, "203.0.113.20/32": False, "2001:db8:f::10/128": True}


def test_an_address_serves_while_any_of_its_vips_can():
    cfg = _config()
    tcp80 = "203.0.113.10:80/tcp"
    s = serving_addresses(cfg, {(tcp80, "be1"), (tcp80, "be2")})
    assert s["203.0.113.10/32"] is True  # the UDP service still has dns1
    s = serving_addresses(cfg, {(tcp80, "be1"), (tcp80, "be2"), ("203.0.113.10:53/udp", "dns1")})
    assert s["203.0.113.10/32"] is False
    assert s["2001:db8:f::10/128"] is True


def test_desired_is_empty_when_unhealthy_or_drained():
    serving = {"203.0.113.10/32": True, "203.0.113.20/32": False}
    assert desired(True, False, serving) == {"203.0.113.10/32"}
    assert desired(False, False, serving) == set()
    assert desired(True, True, serving) == set()


def test_actor_problems_name_the_actor_and_skip_the_speaker():
    kids = [ChildView("steering", True, 0.2), ChildView("worker-0", False, 0.1),
            ChildView("muxer", True, 4.0), ChildView("bgp", False, 9.0)]
    probs = actor_problems(kids, 2.5)
    assert probs == ["worker-0 is not running", "muxer sent no heartbeat for 4.0 s"]
    assert actor_problems([ChildView("config", True, 1.0)], 2.5) == []


def test_stall_needs_queued_work_and_no_progress():
    d = StallDetector(stall_s=2.0)
    assert d.sample(0.0, [("worker-0", 5, 100)]) == []
    assert d.sample(1.9, [("worker-0", 5, 100)]) == []
    out = d.sample(2.0, [("worker-0", 5, 100)])
    assert len(out) == 1 and out[0].startswith("worker-0 made no progress for 2.0 s with 5 packets")
    assert d.sample(2.5, [("worker-0", 5, 101)]) == []  # it moved: fine again
    # An idle worker (empty ring) never stalls, however long its counter stays put.
    assert d.sample(10.0, [("worker-1", 0, 7)]) == [] and d.sample(99.0, [("worker-1", 0, 7)]) == []


def test_debounce_holds_both_ways():
    h = Debounce(down_after_s=1.0, up_after_s=2.0)
    assert h.update(0.0, True) is False  # starts unhealthy: nothing announced at start
    assert h.update(1.9, True) is False
    assert h.update(2.0, True) is True
    assert h.update(3.0, False) is True  # a blip shorter than 1 s is ignored
    assert h.update(3.5, True) is True
    assert h.update(4.0, False) is True
    assert h.update(5.0, False) is False
    assert h.update(5.5, True) is False


class _Proc:
    def __init__(self, alive: bool = True):
        self.alive = alive

    def poll(self):
        return None if self.alive else -9


class _Child:
    def __init__(self, incarnation: int = 0):
        self.proc = _Proc()
        self.hello = True
        self.last_hb = 0.0
        self.incarnation = incarnation


class _FakeSupervisor:
    """Records mailbox sends; children are plain objects with the fields the controller reads."""

    def __init__(self):
        self.children = {n: _Child() for n in ("steering", "worker-0", "muxer", "config", "bgp")}
        self.sent: list[tuple[str, str, dict]] = []

    def send(self, name, type_, **body):
        self.sent.append((name, type_, body))

    def poll(self, timeout_s=0.0):
        pass

    def bgp_cmds(self) -> list[tuple[str, str]]:
        cmds = [m for m in self.sent if m[0] == "bgp" and m[1] in ("bgp.announce", "bgp.withdraw")]
        self.sent = [m for m in self.sent if m not in cmds]
        return [(t, b["prefix"]) for _n, t, b in cmds]


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _controller():
    clock = _Clock()
    c = Controller(ControllerOptions(withdraw_after_s=1.0, announce_after_s=1.0), clock=clock)
    sup = _FakeSupervisor()
    c.supervisor = sup  # no region: the stall check has nothing to read

    def step(dt: float = 0.0) -> None:
        """Advance the clock, every actor beats, one controller tick."""
        clock.t += dt
        for ch in sup.children.values():
            ch.last_hb = clock.t
        c.tick()

    return c, sup, clock, step


def test_controller_announces_after_rise_and_follows_vip_health():
    c, sup, _clock, step = _controller()
    c.on_message("config", {"type": "controller.vips", "serving": {"203.0.113.10/32": True, "203.0.113.20/32": False}})
    step()
    assert sup.bgp_cmds() == []  # not healthy for long enough yet
    step(1.0)
    assert sup.bgp_cmds() == [("bgp.announce", "203.0.113.10/32")]
    c.on_message("config", {"type": "controller.vips", "serving": {"203.0.113.10/32": False, "203.0.113.20/32": True}})
    step(0.1)
    assert sorted(sup.bgp_cmds()) == [("bgp.announce", "203.0.113.20/32"), ("bgp.withdraw", "203.0.113.10/32")]
    events = [b["body"] for n, t, b in sup.sent if t == "controller.publish"]
    assert {"event": "controller.announce", "prefix": "203.0.113.20/32"} in events


def test_controller_withdraws_when_an_actor_dies_and_reannounces_after():
    c, sup, _clock, step = _controller()
    c.on_message("config", {"type": "controller.vips", "serving": {"203.0.113.10/32": True}})
    step()
    step(1.0)
    assert sup.bgp_cmds() == [("bgp.announce", "203.0.113.10/32")]
    sup.children["worker-0"].proc.alive = False
    step(0.5)
    assert sup.bgp_cmds() == []  # within the hold-down
    step(1.0)
    assert sup.bgp_cmds() == [("bgp.withdraw", "203.0.113.10/32")]
    assert c.state()["problems"] == ["worker-0 is not running"] and not c.state()["healthy"]
    health = [b["body"] for n, t, b in sup.sent if t == "controller.publish" and b["body"]["event"] == "controller.health"]
    assert health[-1]["healthy"] is False and health[-1]["reasons"] == ["worker-0 is not running"]
    sup.children["worker-0"].proc.alive = True
    step(0.5)
    step(1.0)
    assert sup.bgp_cmds() == [("bgp.announce", "203.0.113.10/32")]


def test_controller_drain_and_restarted_speaker():
    c, sup, _clock, step = _controller()
    c.on_message("config", {"type": "controller.vips", "serving": {"203.0.113.10/32": True}})
    step()
    step(1.0)
    sup.bgp_cmds()
    c.on_message("config", {"type": "controller.drain", "drained": True})
    assert sup.bgp_cmds() == [("bgp.withdraw", "203.0.113.10/32")] and c.state()["drained"]
    c.on_message("config", {"type": "controller.drain", "drained": False})
    assert sup.bgp_cmds() == [("bgp.announce", "203.0.113.10/32")]
    sup.children["bgp"].incarnation = 1  # the speaker was restarted: it knows nothing
    step(0.1)
    assert sup.bgp_cmds() == [("bgp.announce", "203.0.113.10/32")]


def test_controller_forwards_speaker_events_to_the_event_stream():
    c, sup, _clock, _step = _controller()
    c.on_message("bgp", {"v": 1, "type": "bgp.event", "name": "bgp", "pid": 1, "event": "bgp.state",
                         "peer": "198.18.2.1", "old": "OpenConfirm", "new": "Established"})
    assert sup.sent == [("config", "controller.publish", {"topic": "bgp", "body": {
        "event": "bgp.state", "peer": "198.18.2.1", "old": "OpenConfirm", "new": "Established"}})]


def test_controller_shutdown_withdraws_everything():
    c, sup, _clock, step = _controller()
    c.o.shutdown_wait_s = 0.0
    c.on_message("config", {"type": "controller.vips", "serving": {"203.0.113.10/32": True, "2001:db8:f::10/128": True}})
    step()
    step(1.0)
    sup.bgp_cmds()
    c.shutdown()
    assert sorted(sup.bgp_cmds()) == [("bgp.withdraw", "2001:db8:f::10/128"), ("bgp.withdraw", "203.0.113.10/32")]
    step(5)
    assert sup.bgp_cmds() == []  # never re-announced while stopping


def test_stale_vip_health_never_adds_a_prefix():
    c, sup, _clock, step = _controller()
    step()
    step(1.0)
    assert sup.bgp_cmds() == []  # no VIP health yet: nothing to announce
    c.on_message("config", {"type": "controller.vips", "serving": {"203.0.113.10/32": True}})
    step(0.1)
    assert sup.bgp_cmds() == [("bgp.announce", "203.0.113.10/32")]
    step(10)  # the config manager stopped answering (it is alive here)
    assert sup.bgp_cmds() == []  # keeps what it announced, adds nothing new


def test_flapping_backend_is_damped_and_a_one_off_outage_is_not():
    """A VIP whose only backend flaps every 0.5 s for 60 s: without damping the routers see
    a withdraw and an announce every second (60 + 60 UPDATEs); with it each re-announce
    waits twice as long as the last (1, 2, 4 ... s, at most 30 s), so a handful.  Withdraws
    are never delayed.  A single outage later, once the penalty has decayed, is
    re-announced as soon as the backend is back."""
    vip = "203.0.113.10/32"

    def flap(opts: ControllerOptions) -> tuple[int, int, Controller, _Clock]:
        clock = _Clock()
        c = Controller(opts, clock=clock)
        sup = _FakeSupervisor()
        c.supervisor = sup
        withdraws = announces = 0
        up = True
        for i in range(240):  # 60 s in 0.25 s ticks; the backend changes state every 0.5 s
            if i % 2 == 0:
                up = not up if i >= 8 else True
            c.on_message("config", {"type": "controller.vips", "serving": {vip: up}})
            clock.t += 0.25
            for ch in sup.children.values():
                ch.last_hb = clock.t
            c.tick()
            for t, _p in sup.bgp_cmds():
                withdraws += t == "bgp.withdraw"
                announces += t == "bgp.announce"
                if t == "bgp.withdraw":
                    assert not up  # a withdraw is never late: it follows the backend at once
        return withdraws, announces, c, clock

    plain = flap(ControllerOptions(reannounce_hold_s=0.0))
    damped = flap(ControllerOptions())
    print(f"\nbackend flapping every 0.5 s for 60 s: {plain[0]} withdraws / {plain[1]} announces without damping, "
          f"{damped[0]} / {damped[1]} with it")
    assert plain[0] >= 50 and plain[1] >= 50
    assert damped[0] <= 12 and damped[1] <= 12  # hold 1, 2, 4, 8, 16 s, then 30 s, minus the decay
    c, clock = damped[2], damped[3]
    assert c.state()["held"] or vip in c.announced

    # 5 minutes later the penalty has decayed: one outage costs no extra wait.
    clock.t += 300
    sup = c.supervisor
    c.on_message("config", {"type": "controller.vips", "serving": {vip: True}})
    for ch in sup.children.values():
        ch.last_hb = clock.t
    c.tick()
    sup.bgp_cmds()
    assert vip in c.announced
    c.on_message("config", {"type": "controller.vips", "serving": {vip: False}})
    c.tick()
    assert sup.bgp_cmds() == [("bgp.withdraw", vip)]
    clock.t += 1.0  # the backend is back after 1 s: announced on the next tick
    c.on_message("config", {"type": "controller.vips", "serving": {vip: True}})
    c.tick()
    assert sup.bgp_cmds() == [("bgp.announce", vip)]


def test_new_config_generation_asks_the_speaker_to_reload_bgp():
    c, sup, _clock, step = _controller()
    serving = {"203.0.113.10/32": True}
    c.on_message("config", {"type": "controller.vips", "serving": serving, "generation": 3})
    c.on_message("config", {"type": "controller.vips", "serving": serving, "generation": 3})
    assert [t for n, t, _b in sup.sent if n == "bgp"] == []  # the speaker read generation 3 at start
    c.on_message("config", {"type": "controller.vips", "serving": serving, "generation": 4})
    assert [t for n, t, _b in sup.sent if n == "bgp"] == ["bgp.reload"]
