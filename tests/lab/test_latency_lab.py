"""Latency, proven: one request at a time through the VIP adds under 1 ms at the median
with each NIC driver (generous on purpose; bench/bench_lab.py reports the real figure).

The probes (maglev.lab.latency) alternate between the VIP and a backend's own address, so
both paths see the same machine load; the added latency is the difference of the medians.
"""

from __future__ import annotations

import os

import pytest

from maglev.lab.latency import round_trips

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
    rt = round_trips(lab.state, count=60)
    for proto in ("udp", "tcp_connect"):
        r = rt[proto]
        assert r["vip"]["n"] >= 50 and r["direct"]["n"] >= 50, rt  # nearly every probe answered
        assert r["added"]["p50"] < 1000.0, f"{nic}: {proto} through the VIP adds {r['added']['p50']} us: {rt}"
