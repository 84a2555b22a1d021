"""wrk beside our own HTTP client: its report parsed, and a short run through the VIP."""

from __future__ import annotations

import pytest

from maglev.lab.topology import VIP_V4
from maglev.lab.wrk import parse_wrk, why_no_wrk, wrk_load

# wrk 4.1.0 (Debian), 1 thread, 4 connections, --latency, against the lab httpd
REPORT = """Running 1s test @ http://127.0.0.1:46463/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.87ms    2.77ms  20.02ms   88.69%
    Req/Sec     4.74k     3.59k   11.70k    80.00%
  Latency Distribution
     50%  373.00us
     75%    2.69ms
     90%    5.18ms
     99%   13.65ms
  4726 requests in 1.01s, 756.90KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:   4693.73
Transfer/sec:    751.73KB
"""


def test_parse_wrk_report():
    r = parse_wrk(REPORT)
    assert r["requests"] == 4726 and r["elapsed_s"] == 1.01 and r["requests_per_s"] == 4693.73
    assert r["latency_ms"] == {"p50": 0.373, "p75": 2.69, "p90": 5.18, "p99": 13.65}
    assert r["errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 1} and r["non_2xx"] == 3
    with pytest.raises(ValueError, match="no wrk report"):
        parse_wrk("wrk: invalid URL\n")


@pytest.mark.slow
def test_wrk_through_the_vip(make_lab):
    if reason := why_no_wrk():
        pytest.skip(reason)
    lab = make_lab(encap="gre", backends=2)
    r = wrk_load(lab.state["client"]["ns"], VIP_V4, seconds=1, connections=4)
    assert r["requests"] > 0 and r["non_2xx"] == 0 and sum(r["errors"].values()) == 0, r
    assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
