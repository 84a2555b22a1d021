"""AF_XDP end to end: `maglev run --nic afxdp:eth0` receives through the XDP program and
the AF_XDP sockets and transmits through the same sockets' TX rings (not the AF_PACKET
fallback); HTTP through the VIP works."""

from __future__ import annotations

import re
import time

import pytest

from maglev.lab import topology as topo
from maglev.lab.client import http_load
from tests.nic_helpers import why_no_afxdp

pytestmark = pytest.mark.root


@pytest.mark.skipif(bool(why_no_afxdp()), reason=why_no_afxdp() or "available")
def test_http_through_the_vip_with_afxdp_transmit(make_lab):
    lab = make_lab(encap="gre", backends=2, nic="afxdp:eth0", forwarder=True)
    st = lab.state
    result = http_load(st["client"]["ns"], topo.VIP_V4, 300, concurrency=4, deadline_s=120)
    assert result.ok == 300, result.to_dict()
    assert len(result.backends) == 2
    log = lab.state_dir / "logs" / "maglev.log"
    assert lab.stop_process("maglev")
    deadline = time.monotonic() + 10
    line = ""
    while time.monotonic() < deadline and not line:
        m = re.search(r"AF_XDP transmit: (\d+) through the TX rings, (\d+) through the AF_PACKET fallback",
                      log.read_text(errors="replace"))
        line = m.group(0) if m else ""
        if not m:
            time.sleep(0.1)
    assert m, log.read_text(errors="replace")[-2000:]
    rings, fallback = int(m.group(1)), int(m.group(2))
    # Every request's packets (SYN, ACK, request, FIN...) crossed maglev: ~5 per request.
    assert rings >= 300 * 3, line
    assert fallback <= rings // 100, line  # at most the first moments before the muxer took the sockets
