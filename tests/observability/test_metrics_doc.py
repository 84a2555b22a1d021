"""docs/metrics.md names every family the exporter can emit (the scrape side of this check
is in test_agree.py, which compares the page with a real run's endpoint)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from maglev.observability import prometheus

from .metrics_doc import documented

ROOT = Path(__file__).resolve().parents[2]


def test_every_family_in_the_code_is_documented():
    src = Path(prometheus.__file__).read_text()
    literal = set(re.findall(r'"(maglev_[a-z0-9_]+)"', src))
    assert literal, "no family names found: has the exporter moved?"
    doc = documented()
    assert literal - set(doc) == set(), "families exported but not in docs/metrics.md"


def test_the_dashboard_only_queries_documented_families():
    dash = json.loads((ROOT / "examples" / "grafana" / "maglev.json").read_text())
    doc = documented()
    used = set()
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = set()
            for n in re.findall(r"\b(maglev_[a-z0-9_]+)", t["expr"]):
                # a histogram is queried through its _bucket/_count/_sum series, by rate()/increase()
                fam = re.sub(r"_(bucket|count|sum)$", "", n)
                if fam != n and doc.get(fam, {}).get("type") == "histogram":
                    assert re.search(rf"(rate|increase)\({n}\b", t["expr"]), t["expr"]
                    n = fam
                names.add(n)
            assert names, t["expr"]
            used |= names
            # counters are only ever read through rate()/increase()
            for n in names:
                if doc[n]["type"] == "counter":
                    assert re.search(rf"(rate|increase)\({n}\b", t["expr"]), t["expr"]
    assert used - set(doc) == set()
    # what the dashboard is for (issue 18): drops, per worker and per VIP, health, table
    # share, conntrack, rings and fallbacks, generations, BGP
    for must in ("maglev_drops_total", "maglev_worker_packets_total", "maglev_vip_packets_total",
                 "maglev_backend_up", "maglev_table_entries_min", "maglev_conntrack_entries",
                 "maglev_conntrack_table_full_total", "maglev_ring_occupancy_ratio",
                 "maglev_fallback_packets_total", "maglev_tables_generation", "maglev_bgp_state",
                 "maglev_config_apply_seconds"):
        assert must in used, must
