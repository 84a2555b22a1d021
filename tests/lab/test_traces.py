"""The recorded lab traces (traces/*.pcap) through `maglev replay` and `maglev run
--nic pcap:` against their goldens (traces/README.md).  No root needed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TRACES = Path(__file__).resolve().parents[2] / "traces"


def _golden_module():
    spec = importlib.util.spec_from_file_location("maglev_traces_golden", TRACES / "golden.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


golden = _golden_module()
PCAPS = golden.traces()


def test_every_trace_has_a_golden():
    assert {p.stem for p in PCAPS} >= {"http", "ipv6", "frag", "synburst"}
    for p in PCAPS:
        assert golden.golden_path(p).exists(), f"{p.name} has no golden: run `just traces-golden`"


@pytest.mark.parametrize("pcap", PCAPS, ids=[p.stem for p in PCAPS])
def test_replay_matches_golden(pcap):
    want = json.loads(golden.golden_path(pcap).read_text())
    got = golden.replay(pcap)
    assert got["summary"] == want["summary"]
    assert got["out_packets"] == want["out_packets"]
    s = got["summary"]
    assert s["packets_in"] == s["forwarded"] + sum(s["dropped"].values())


@pytest.mark.slow
@pytest.mark.parametrize("pcap", PCAPS, ids=[p.stem for p in PCAPS])
def test_run_pcap_nic_matches_golden(pcap):
    want = json.loads(golden.golden_path(pcap).read_text())
    got = golden.run_pipeline(pcap, workers=2)
    assert sorted(got["out_packets"]) == sorted(want["out_packets"])


def test_traces_have_the_promised_content():
    frag = json.loads(golden.golden_path(TRACES / "frag.pcap").read_text())["summary"]
    # every fragment of every datagram goes to one backend (3-tuple hash, paper 4.3)
    assert frag["forwarded"] == 18 and len(frag["per_backend"]) == 1
    syn = json.loads(golden.golden_path(TRACES / "synburst.pcap").read_text())["summary"]
    assert syn["forwarded"] == 200 and len(syn["per_backend"]) == 3
    v6 = json.loads(golden.golden_path(TRACES / "ipv6.pcap").read_text())["summary"]
    assert all(":" in b for b in v6["per_backend"])
