"""Change preview: ``preview-config`` (``maglev ctl apply --dry-run``) and ``maglev table
--diff``: per VIP the share of table entries and of (estimated) established flows that would
move, with nothing committed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from maglev import config as cfg
from maglev.control.client import ControlClient
from maglev.control.preview import diff_tables
from maglev.control.protocol import ProtocolError
from maglev.datapath.tables import build_tables, read_tables, vip_key

from .conftest import VIP, config_dict

MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


def blob(d):
    return build_tables(cfg.Config.from_dict(d))


def test_identical_tables_move_nothing():
    rows = diff_tables(blob(config_dict(4)), blob(config_dict(4)))
    assert [(r["status"], r["entries_moved_share"], r["flows_moved_share"]) for r in rows] == [("unchanged", 0.0, 0.0)]


def test_removing_a_backend_moves_its_entries_and_its_flows_only():
    old, new = config_dict(4), config_dict(4)
    new["vip"][0]["backend"].pop()
    ob = blob(old)
    view = read_tables(ob)
    gone = sum(1 for e in view.maglev(0) if e == 3) / view.vips[0].table_size
    r = diff_tables(ob, blob(new))[0]
    assert r["status"] == "changed" and r["entries_basis"] == "exact"
    assert r["entries_moved_share"] >= round(gone, 6)  # its slots, plus Maglev's small disruption
    assert r["flows_moved_share"] == round(gone, 6)  # only flows on the removed backend move
    assert r["flows_basis"] == "table_entries"


def test_adding_a_backend_moves_entries_but_no_established_flow():
    new = config_dict(5)
    r = diff_tables(blob(config_dict(4)), blob(new))[0]
    assert 0.1 < r["entries_moved_share"] < 0.3
    assert r["flows_moved_share"] == 0.0


def test_packet_weights_and_added_removed_vips():
    old, new = config_dict(4), config_dict(4)
    new["vip"][0]["backend"][0]["weight"] = 0  # drained: keeps its flows
    new["vip"][0]["backend"].pop(1)  # removed: its flows move
    extra = dict(new["vip"][0], address="203.0.113.77")
    new["vip"].append(extra)
    packets = {(VIP, "198.18.1.1"): 100, (VIP, "198.18.1.2"): 300, (VIP, "198.18.1.3"): 100}
    rows = {r["vip"]: r for r in diff_tables(blob(old), blob(new), packets)}
    r = rows[VIP]
    assert r["flows_basis"] == "backend_packets" and r["flows_moved_share"] == 0.6
    assert rows["203.0.113.77:80/tcp"]["status"] == "added"
    back = {r["vip"]: r for r in diff_tables(blob(new), blob(old))}
    assert back["203.0.113.77:80/tcp"]["status"] == "removed"
    assert back["203.0.113.77:80/tcp"]["flows_moved_share"] == 1.0


def test_table_size_change_is_sampled_and_hashing_change_re_selects_flows():
    new = config_dict(4, size=1009)
    r = diff_tables(blob(config_dict(4)), blob(new))[0]
    assert "sampled" in r["entries_basis"] and 0.6 < r["entries_moved_share"] < 0.9
    assert r["flows_moved_share"] == 0.0  # conntrack keeps every flow: all backends stay
    sticky = config_dict(4)
    sticky["vip"][0]["hash"] = "src_ip"
    r = diff_tables(blob(config_dict(4)), blob(sticky))[0]
    assert r["entries_moved_share"] == 0.0 and 0.7 < r["flows_moved_share"] < 0.8  # 1 - 4 x (1/4)^2
    assert "hashing options changed" in r["flows_basis"]


def test_stateless_vip_flows_move_with_entries():
    d = config_dict(4)
    d["vip"][0].update(protocol="udp", conntrack=False, health={"type": "none"})
    new = json.loads(json.dumps(d))
    new["vip"][0]["backend"].pop()
    r = diff_tables(blob(d), blob(new))[0]
    assert r["flows_moved_share"] == r["entries_moved_share"] > 0.2


def test_preview_config_op_commits_nothing(served):
    before = served.mgr.generation
    new = config_dict(3)
    new["vip"][0]["backend"].pop()
    with ControlClient(served.server.bound_endpoint) as c:
        r = c.call("preview-config", {"config": new})
        assert r["committed"] is False and r["changed"] is True and r["generation"] == before
        (row,) = r["vips"]
        assert row["vip"] == VIP and 0.3 < row["entries_moved_share"] < 0.4
        assert 0.3 < row["flows_moved_share"] < 0.4
        assert c.call("status")["generation"] == before
        assert len(c.call("get-config")["config"]["vip"][0]["backend"]) == 3
        bad = config_dict(3)
        bad["vip"][0]["hash"] = "sticky"
        with pytest.raises(ProtocolError) as ei:
            c.call("preview-config", {"config": bad})
        assert ei.value.code == "invalid-config" and "vip[0].hash" in ei.value.message
        with pytest.raises(ProtocolError) as ei:
            c.call("preview-config", {"config": new, "extra": 1})
        assert ei.value.code == "bad-args"
    assert served.mgr.generation == before


def test_preview_weights_from_the_actor_hook(served):
    served.mgr.backend_packets = lambda: {(VIP, "198.18.1.3"): 10, (VIP, "198.18.1.1"): 30}
    new = config_dict(3)
    new["vip"][0]["backend"].pop()
    with ControlClient(served.server.bound_endpoint) as c:
        (row,) = c.call("preview-config", {"config": new})["vips"]
    assert row["flows_basis"] == "backend_packets" and row["flows_moved_share"] == 0.25


def test_table_diff_cli(tmp_path):
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    d = config_dict(4)
    old.write_text(cfg.dump_toml(cfg.Config.from_dict(d)))
    d["vip"][0]["backend"].pop()
    new.write_text(cfg.dump_toml(cfg.Config.from_dict(d)))
    r = subprocess.run([*MAGLEV, "table", "--diff", str(old), str(new), "--json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (row,) = out["vips"]
    want = diff_tables(blob(config_dict(4)), blob(d))[0]
    assert row == want and vip_key(read_tables(blob(d)).vips[0]) == row["vip"]
    text = subprocess.run([*MAGLEV, "table", "--diff", str(old), str(new)], capture_output=True, text=True,
                          timeout=60)
    assert text.returncode == 0 and VIP in text.stdout and "entries moved" in text.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(old.read_text().replace('hash = "5tuple"', 'hash = "sticky"'))
    r = subprocess.run([*MAGLEV, "table", "--diff", str(old), str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "vip[0].hash: 'sticky' is not one of" in r.stderr
    assert "Traceback" not in r.stderr


def _bid(addr: str) -> int:
    from maglev.datapath.tables import backend_id

    return backend_id(VIP, addr)


def test_counted_flows_move_exactly_when_their_backend_is_removed_or_down():
    old, new = config_dict(4), config_dict(4)
    new["vip"][0]["backend"][0]["weight"] = 0  # drained: healthy, keeps its flows
    new["vip"][0]["backend"].pop(1)  # removed
    down = frozenset({(VIP, "198.18.1.3")})  # down in the new tables
    new_blob = build_tables(cfg.Config.from_dict(new), down=down)
    flows = {_bid("198.18.1.1"): 10, _bid("198.18.1.2"): 20, _bid("198.18.1.3"): 30,
             _bid("198.18.1.4"): 40, 12345: 99}  # 12345: no backend of this VIP
    (r,) = diff_tables(blob(old), new_blob, flows=flows)
    assert r["flows_basis"] == "conntrack" and r["flows_estimated"] is False
    assert (r["flows_live_entries"], r["flows_moved_entries"]) == (100, 50)
    assert r["flows_moved_share"] == 0.5
    # the packet weights are not used when the flows are counted
    packets = {(VIP, "198.18.1.2"): 1000}
    assert diff_tables(blob(old), new_blob, packets, flows)[0]["flows_moved_share"] == 0.5
    # no live entry on the VIP: exact zero
    (z,) = diff_tables(blob(old), new_blob, flows={})
    assert z["flows_moved_share"] == 0.0 and z["flows_estimated"] is False and z["flows_live_entries"] == 0


def test_counted_flows_under_a_hashing_change_or_without_conntrack_stay_estimates():
    flows = {_bid(f"198.18.1.{i}"): 25 for i in range(1, 5)}
    sticky = config_dict(4)
    sticky["vip"][0]["hash"] = "src_ip"
    (r,) = diff_tables(blob(config_dict(4)), blob(sticky), flows=flows)
    assert r["flows_basis"].startswith("conntrack; hashing options changed") and r["flows_estimated"] is True
    assert 0.7 < r["flows_moved_share"] < 0.8 and "flows_live_entries" not in r
    d = config_dict(4)
    d["vip"][0].update(protocol="udp", conntrack=False, health={"type": "none"})
    n = json.loads(json.dumps(d))
    n["vip"][0]["backend"].pop()
    (s,) = diff_tables(blob(d), blob(n), flows={})
    assert s["flows_moved_share"] == s["entries_moved_share"] and s["flows_estimated"] is True


def test_preview_counts_from_the_actor_census_hook_and_falls_back_without_it(served):
    seen = []

    def census(ids, published):
        seen.append((ids, read_tables(published).header["generation"]))
        return {_bid("198.18.1.3"): 3, _bid("198.18.1.1"): 1}, {"used": True, "tables": 1}

    served.mgr.flow_census = census
    served.mgr.backend_packets = lambda: {(VIP, "198.18.1.3"): 10, (VIP, "198.18.1.1"): 30}
    new = config_dict(3)
    new["vip"][0]["backend"].pop()
    with ControlClient(served.server.bound_endpoint) as c:
        r = c.call("preview-config", {"config": new})
        assert r["conntrack"] == {"used": True, "tables": 1}
        (row,) = r["vips"]
        assert row["flows_basis"] == "conntrack" and row["flows_moved_share"] == 0.75
        assert seen and seen[0][0] == sorted({_bid(f"198.18.1.{i}") for i in (1, 2, 3)})
        served.mgr.flow_census = lambda ids, published: (None, {"used": False, "why": "private"})
        r = c.call("preview-config", {"config": new})
        assert r["conntrack"]["why"] == "private"
        assert r["vips"][0]["flows_basis"] == "backend_packets" and r["vips"][0]["flows_moved_share"] == 0.25
