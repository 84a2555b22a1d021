"""VIP priority under overload through a real ``maglev run`` (steering, one worker, muxer,
config manager as processes; generator NIC, unpaced, so the worker is the bottleneck and
its rx ring fills): the priority-0 VIP's packets are shed before enqueue and counted per
VIP, the priority-7 VIP loses nothing, and the accounting stays exact.  The same run with
equal priorities sheds nothing (back pressure only, as before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maglev.testing import unique
from tests.run_helpers import NO_LOAD_STALL_MS, run_to_eof

HIGH, LOW = "203.0.113.81", "203.0.113.82"

CONF = """
[instance]
name = "{name}"
source_ipv4 = "198.18.0.1"

[[vip]]
address = "{high}"
port = 80
priority = {ph}
[[vip.backend]]
address = "198.18.1.1"

[[vip]]
address = "{low}"
port = 80
priority = {pl}
[[vip.backend]]
address = "198.18.1.2"
"""


def run(shortdir: Path, ph: int, pl: int, packets: int) -> dict:
    name = unique.name(f"pri{ph}{pl}")
    cfg = shortdir / f"maglev-{ph}{pl}.toml"
    cfg.write_text(CONF.format(name=name, high=HIGH, low=LOW, ph=ph, pl=pl))
    # the worker's ring is full most of the time: off the CPU for 50 ms it would be judged
    # frozen and its packets dropped as owner_stalled (run_helpers.NO_LOAD_STALL_MS)
    return run_to_eof(shortdir, name, ["--workers", "1", "--ring-size", "512", "--config", str(cfg),
                                       "--nic", f"gen:packets={packets},ipv6=0,flows=2000",
                                       "--stall-ms", str(NO_LOAD_STALL_MS)], timeout=180)


@pytest.mark.slow
def test_low_priority_vip_is_shed_and_the_high_one_is_not(shortdir):
    n = 400_000
    s = run(shortdir, 7, 0, n)
    assert s["pool"]["ok"], s["pool"]
    assert s["packets_in"] == n == s["forwarded"] + sum(s["dropped"].values()), s
    shed = s["dropped"].get("priority_shed", 0)
    # An unpaced generator outruns one worker: its ring sits above the high-water mark.
    assert shed > 0, s
    # Every shed packet is the low VIP's, and the split adds up to the exact total.
    assert s["shed_by_vip"] == {f"{LOW}:80/tcp": shed}, s
    assert set(s["dropped"]) == {"priority_shed"}, s["dropped"]

    eq = run(shortdir, 3, 3, n // 4)
    assert eq["pool"]["ok"]
    assert eq["packets_in"] == eq["forwarded"] == n // 4, eq  # back pressure, nothing shed
    assert "shed_by_vip" not in eq and "priority_shed" not in eq["dropped"]
