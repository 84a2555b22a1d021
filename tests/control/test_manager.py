"""ConfigManager: every op, all-or-nothing, health, persistence, publish order."""

from __future__ import annotations

import os

import msgpack
import pytest

from maglev.config import Config, dump_toml
from maglev.control import persist
from maglev.control.manager import ConfigManager
from maglev.control.protocol import Request
from maglev.testing.tables import FALLBACK_FORMAT, fallback_build_tables

VIP = "203.0.113.10:80/tcp"


def req(op, **args):
    return Request(op=op, args=args, id=7)


def tables(blob):
    d = msgpack.unpackb(blob, raw=False)
    assert d["format"] == FALLBACK_FORMAT
    return {v["vip"]: v for v in d["vips"]}


@pytest.fixture
def mgr(publisher, mkconfig, tmp_path):
    events = []
    src = tmp_path / "maglev.toml"
    src.write_text(dump_toml(mkconfig(3)))
    m = ConfigManager.open(
        publisher,
        source_path=src,
        state_path=tmp_path / "state" / "state.json",
        emit=lambda t, b: events.append((t, b)),
        build_tables=fallback_build_tables,
    )
    m.events = events
    return m


def test_open_publishes_generation_one_and_persists(mgr, publisher):
    assert mgr.generation == 1 and mgr.confirmed
    assert publisher.seen == [1, 1, 1]
    assert mgr.state_path.exists()
    assert oct(mgr.state_path.stat().st_mode & 0o777) == "0o600"


def test_set_weight_publishes_and_waits_for_every_worker(mgr, publisher):
    r = mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.2", weight=5))
    assert r.ok, r.error
    assert r.result["generation"] == 2 and r.result["confirmed"] and r.result["changed"]
    assert publisher.seen == [2, 2, 2]
    assert mgr.config.vips[0].backends[1].weight == 5
    t = tables(publisher.blob)[VIP]
    counts = [t["entries"].count(i.to_bytes(4, "little", signed=True)) for i in range(3)]
    assert counts[1] > 3 * counts[0]  # weight 5 vs 1
    assert ("generation", {"generation": 2, "op": "set-weight", "confirmed": True, "apply_ms": r.result["apply_ms"]}) in mgr.events


def test_unchanged_change_does_not_publish(mgr, publisher):
    r = mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.1", weight=1))
    assert r.ok and not r.result["changed"] and r.result["generation"] == 1
    assert publisher.generation == 1


@pytest.mark.parametrize(
    "op,args,code,field",
    [
        ("set-weight", {"vip": VIP, "backend": "198.18.1.1", "weight": -1}, "bad-args", "weight"),
        ("set-weight", {"vip": VIP, "backend": "198.18.1.1", "weight": "3"}, "bad-args", "weight"),
        ("set-weight", {"vip": VIP, "backend": "198.18.1.1"}, "bad-args", "weight"),
        ("set-weight", {"vip": VIP, "backend": "198.18.1.1", "weight": 1, "x": 1}, "bad-args", "x"),
        ("set-weight", {"vip": "203.0.113.99:80/tcp", "backend": "198.18.1.1", "weight": 1}, "not-found", "vip"),
        ("drain", {"vip": VIP, "backend": "nope"}, "not-found", "backend"),
        ("add-backend", {"vip": VIP, "backend": {"address": "10.0.0.x"}}, "invalid-config", "vip[0].backend[3].address"),
        ("add-backend", {"vip": VIP, "backend": {"address": "198.18.1.1"}}, "invalid-config", "vip[0].backend[3]"),
        ("add-backend", {"vip": VIP, "backend": {"address": "2001:db8::1"}}, "invalid-config", "vip[0].backend[3].address"),
        ("add-vip", {"vip": {"address": "203.0.113.10", "port": 80}}, "invalid-config", "vip[1]"),
        ("update-vip", {"vip": VIP, "set": {"table_size": 100}}, "invalid-config", "vip[0].table_size"),
        ("update-vip", {"vip": VIP, "set": {"backend": []}}, "bad-args", "set.backend"),
        ("replace-config", {"config": {"vip": "x"}}, "invalid-config", "vip"),
        ("replace-config", {"config": []}, "bad-args", "config"),
        ("remove-vip", {"vip": 3}, "bad-args", "vip"),
        ("frobnicate", {}, "unknown-op", "op"),
        ("status", {"verbose": True}, "bad-args", "verbose"),
    ],
)
def test_invalid_changes_change_nothing(mgr, publisher, op, args, code, field):
    before_cfg, before_state = mgr.config, mgr.state_path.read_bytes()
    r = mgr.handle(Request(op=op, args=args, id="abc"))
    assert not r.ok and r.id == "abc"
    assert r.error["code"] == code, r.error
    assert r.error["field"] == field, r.error
    assert r.error["message"]
    assert mgr.config is before_cfg
    assert mgr.state_path.read_bytes() == before_state
    assert publisher.generation == 1


def test_every_change_op(mgr):
    assert mgr.handle(req("add-backend", vip=VIP, backend={"address": "198.18.1.9", "weight": 2, "name": "b9"})).ok
    assert mgr.config.vips[0].backends[-1].key == "b9"
    assert mgr.handle(req("drain", vip=VIP, backend="b9")).ok
    assert mgr.config.vips[0].backends[-1].weight == 0
    assert mgr.handle(req("remove-backend", vip=VIP, backend="198.18.1.9")).ok
    assert len(mgr.config.vips[0].backends) == 3
    assert mgr.handle(req("add-vip", vip={"address": "2001:db8::10", "port": 443, "encap": "l2",
                                          "backend": [{"address": "2001:db8::2", "mac": "02:00:00:00:00:02"}]})).ok
    assert mgr.handle(req("update-vip", vip="[2001:db8::10]:443/tcp", set={"health": {"type": "http", "path": "/hz"}})).ok
    h = mgr.config.vip("[2001:db8::10]:443/tcp").health
    assert (h.type, h.path, h.interval_ms) == ("http", "/hz", 1000)
    assert mgr.handle(req("remove-vip", vip="2001:db8::10")).ok  # address alone is enough when unique
    assert len(mgr.config.vips) == 1
    new = mgr.config.to_dict()
    new["vip"][0]["backend"] = new["vip"][0]["backend"][:1]
    r = mgr.handle(req("replace-config", config=new))
    assert r.ok and len(mgr.config.vips[0].backends) == 1
    assert mgr.generation == 8  # start + 7 changes
    # Every accepted change is on disk.
    state, _ = persist.load_state(mgr.state_path)
    assert state == mgr.config


def test_queries(mgr):
    s = mgr.handle(req("status")).result
    assert s["generation"] == 1 and s["vips"] == 1 and s["backends"] == 3 and s["table_builder"] == "custom"
    v = mgr.handle(req("vips")).result
    assert v[0]["vip"] == VIP and v[0]["backends"] == 3
    b = mgr.handle(req("backends", vip=VIP)).result
    assert sum(r["entries"] for r in b["backends"]) == 251
    assert {r["health"] for r in b["backends"]} == {"unknown"}
    assert abs(sum(r["share"] for r in b["backends"]) - 1) < 1e-5
    c = mgr.handle(req("get-config")).result
    assert Config.from_dict(c["config"]) == mgr.config


def test_health_down_removes_backend_and_recovery_restores(mgr, publisher):
    r = mgr.handle(req("health-report", reports=[{"vip": VIP, "backend": "198.18.1.1", "up": False, "detail": "refused"}]))
    assert r.ok and r.result["changed"] and r.result["generation"] == 2
    t = tables(publisher.blob)[VIP]
    assert "198.18.1.1" not in t["backends"] and len(t["backends"]) == 2
    assert ("health", {"vip": VIP, "backend": "198.18.1.1", "up": False, "detail": "refused", "generation": 2}) in mgr.events
    b = {r["backend"]: r for r in mgr.backends(VIP)["backends"]}
    assert b["198.18.1.1"]["health"] == "down" and b["198.18.1.1"]["entries"] == 0
    # The config itself is untouched and so is the state file (health is not config).
    assert len(mgr.config.vips[0].backends) == 3
    r = mgr.handle(req("health-report", reports=[{"vip": VIP, "backend": "198.18.1.1", "up": True}]))
    assert r.result["generation"] == 3
    assert len(tables(publisher.blob)[VIP]["backends"]) == 3


def test_all_down_alerts_and_drops(mgr, publisher):
    reports = [{"vip": VIP, "backend": f"198.18.1.{i}", "up": False} for i in (1, 2, 3)]
    assert mgr.handle(req("health-report", reports=reports)).ok
    t = tables(publisher.blob)[VIP]
    assert t["backends"] == [] and set(t["entries"]) == {0xFF}  # every slot NO_BACKEND (-1)
    assert ("alert", {"kind": "vip-all-down", "vip": VIP, "generation": 2}) in mgr.events
    assert mgr.counters.vip_all_down == 1
    assert mgr.status()["vips_all_down"] == [VIP]
    mgr.handle(req("health-report", reports=[{"vip": VIP, "backend": "198.18.1.3", "up": True}]))
    assert any(t == "alert" and b["kind"] == "vip-recovered" for t, b in mgr.events)


def test_health_report_for_unknown_backend_is_ignored(mgr, publisher):
    r = mgr.handle(req("health-report", reports=[{"vip": VIP, "backend": "198.18.9.9", "up": False}]))
    assert r.ok and r.result == {"generation": 1, "changed": False, "ignored": 1}


def test_full_health_report_forgets_unreported(mgr):
    mgr.handle(req("health-report", reports=[{"vip": VIP, "backend": "198.18.1.1", "up": False}]))
    r = mgr.handle(req("health-report", reports=[], full=True))
    assert r.result["changed"] and mgr.down_set() == frozenset()


def test_removed_backend_forgets_health(mgr):
    mgr.handle(req("health-report", reports=[{"vip": VIP, "backend": "198.18.1.1", "up": False}]))
    mgr.handle(req("remove-backend", vip=VIP, backend="198.18.1.1"))
    assert mgr.health == {}


def test_publish_failure_changes_nothing(mgr, publisher):
    before = mgr.state_path.read_bytes()
    publisher.fail_next = TimeoutError("a worker never released the idle copy")
    r = mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.1", weight=9))
    assert not r.ok and r.error["code"] == "publish-failed"
    assert mgr.config.vips[0].backends[0].weight == 1
    assert mgr.state_path.read_bytes() == before
    assert mgr.generation == 1


def test_persist_failure_changes_nothing(mgr, publisher, tmp_path):
    if os.geteuid() == 0:
        # root ignores directory permissions: make the state path a directory instead.
        mgr.state_path = tmp_path / "adir"
        mgr.state_path.mkdir()
    else:
        mgr.state_path.parent.chmod(0o500)
    try:
        r = mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.1", weight=9))
    finally:
        mgr.state_path.parent.chmod(0o700)
    assert not r.ok and r.error["code"] == "persist-failed"
    assert mgr.config.vips[0].backends[0].weight == 1
    # The new tables were live for a moment; the previous content is published again.
    assert publisher.generation == 3 and publisher.blob == publisher.history[0][1]
    assert mgr.generation == 3 and publisher.seen == [3, 3, 3]


def test_unconfirmed_generation_is_reported(mgr, publisher):
    mgr.confirm_timeout = 0.05
    publisher.stall(1)
    r = mgr.handle(req("drain", vip=VIP, backend="198.18.1.1"))
    assert r.ok and r.result["confirmed"] is False and mgr.counters.unconfirmed == 1
    publisher.stall(1, False)


def test_restart_resumes_last_accepted_state(mgr, publisher, tmp_path):
    mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.1", weight=4))
    mgr.handle(req("add-backend", vip=VIP, backend={"address": "198.18.1.50"}))
    again = ConfigManager.open(publisher, source_path=mgr.source_path, state_path=mgr.state_path,
                               build_tables=fallback_build_tables)
    assert again.resumed and again.config == mgr.config


def test_edited_source_wins_over_state(mgr, publisher, mkconfig):
    mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.1", weight=4))
    mgr.source_path.write_text(dump_toml(mkconfig(5)))
    again = ConfigManager.open(publisher, source_path=mgr.source_path, state_path=mgr.state_path,
                               build_tables=fallback_build_tables)
    assert not again.resumed and len(again.config.vips[0].backends) == 5


def test_reload(mgr, mkconfig):
    mgr.source_path.write_text(dump_toml(mkconfig(4)))
    r = mgr.handle(req("reload"))
    assert r.ok and r.result["changed"] and len(mgr.config.vips[0].backends) == 4
    mgr.source_path.write_text("[[vip]]\naddress = 'bogus'\n")
    r = mgr.handle(req("reload"))
    assert not r.ok and r.error["code"] == "invalid-config" and r.error["field"] == "vip[0].address"
    assert len(mgr.config.vips[0].backends) == 4


def test_atomic_write_crash_leaves_old_file(tmp_path, monkeypatch):
    p = tmp_path / "f"
    persist.atomic_write(p, b"old")

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        persist.atomic_write(p, b"new" * 1000)
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]  # no temp file left behind


def test_plain_equals_to_dict():
    from maglev.control.ops import plain

    c = Config.from_dict({
        "instance": {"source_ipv4": "198.18.0.1", "source_ipv6": "2001:db8::1"},
        "bgp": {"local_asn": 65001, "router_id": "198.18.0.1",
                "peer": [{"address": "198.18.0.2", "asn": 65000}]},
        "vip": [{"address": "203.0.113.1", "port": 80, "health": {"type": "http", "path": "/x"},
                 "backend": [{"address": "198.18.1.1", "weight": 3, "name": "a"}]},
                {"address": "2001:db8::10", "port": 0, "protocol": "udp"}],
    })
    assert plain(c) == c.to_dict()
    assert Config.from_dict(plain(c)) == c


def test_state_file_that_is_not_ours_is_an_error(tmp_path):
    from maglev.errors import ConfigError

    p = tmp_path / "state.json"
    p.write_text("[vip]\n")
    with pytest.raises(ConfigError, match="not a maglev state file"):
        persist.load_state(p)
    assert persist.load_state(tmp_path / "missing.json") is None


def test_ops_never_mutate_the_shared_base(mgr):
    import copy as _copy

    base = mgr.plain(mgr.config)
    snapshot = _copy.deepcopy(base)
    for op, args in [
        ("set-weight", {"vip": VIP, "backend": "198.18.1.1", "weight": 7}),
        ("add-backend", {"vip": VIP, "backend": {"address": "198.18.1.40"}}),
        ("remove-backend", {"vip": VIP, "backend": "198.18.1.2"}),
        ("update-vip", {"vip": VIP, "set": {"health": {"rise": 5}}}),
        ("add-vip", {"vip": {"address": "203.0.113.99", "port": 1}}),
        ("remove-vip", {"vip": VIP}),
    ]:
        from maglev.control import ops

        ops.CHANGES[op](mgr.config, args, base)
        assert base == snapshot, op


@pytest.mark.parametrize("bad", [True, 1.0, "1", None])
def test_revalidation_memo_never_accepts_a_lookalike(bad):
    """Config validation remembers accepted backends; a value equal to an accepted one but
    of another type (True == 1 == 1.0 in Python) must still be rejected."""
    from maglev.errors import ConfigError

    def cfg(w):
        return {"instance": {"source_ipv4": "198.18.0.1"},
                "vip": [{"address": "203.0.113.1", "port": 80, "table_size": 13,
                         "backend": [{"address": "198.18.1.1", "weight": w}]}]}

    assert Config.from_dict(cfg(1)).vips[0].backends[0].weight == 1
    with pytest.raises(ConfigError, match="is not an integer"):
        Config.from_dict(cfg(bad))


def test_state_of_another_source_file_is_not_resumed(mgr, publisher, tmp_path):
    """Two runs from equal copies of a config (tests, labs) must not resume each other."""
    mgr.handle(req("set-weight", vip=VIP, backend="198.18.1.1", weight=4))
    copy = tmp_path / "copy.toml"
    copy.write_bytes(mgr.source_path.read_bytes())
    other = ConfigManager.open(publisher, source_path=copy, state_path=mgr.state_path,
                               build_tables=fallback_build_tables)
    assert not other.resumed and other.config.vips[0].backends[0].weight == 1


def test_unusable_state_file_is_set_aside_not_fatal(mgr, publisher):
    mgr.state_path.write_text('{"format": "maglev-state-1", "config": {"vip": [{"adress": "x"}]}}')
    again = ConfigManager.open(publisher, source_path=mgr.source_path, state_path=mgr.state_path,
                               build_tables=fallback_build_tables)
    assert not again.resumed and len(again.config.vips[0].backends) == 3
    assert mgr.state_path.with_name("state.json.invalid").exists()
    assert persist.load_state(mgr.state_path)[0] == again.config


@pytest.mark.parametrize(
    "op,args,what",
    [
        ("replace-config", {"config": {"instance": {"name": "t1", "source_ipv4": "198.18.0.1"}}}, "every VIP (1)"),
        # (the run's name kept: a config that renames the instance is refused first)
        ("replace-config", {"config": {"instance": {"name": "t1"}, "vip": []}}, "every VIP (1)"),
        ("remove-vip", {"vip": VIP}, "every VIP (1)"),
        ("remove-backend", {"vip": VIP, "backend": "198.18.1.3"}, f"every backend of VIP {VIP}"),
    ],
)
def test_emptying_changes_need_force(mgr, publisher, op, args, what):
    """Removing every VIP, or the last backend of a VIP, is refused unless forced: nothing
    changes, nothing is published or persisted; with force=true it is applied."""
    if op == "remove-backend":  # leave one backend, then try to remove it
        for b in ("198.18.1.1", "198.18.1.2"):
            assert mgr.handle(req("remove-backend", vip=VIP, backend=b)).ok
    before_cfg, before_state, gen = mgr.config, mgr.state_path.read_bytes(), publisher.generation
    r = mgr.handle(Request(op=op, args=args, id=1))
    assert not r.ok and r.error["code"] == "needs-force" and r.error["field"] == "force", r.error
    assert what in r.error["message"] and "force=true" in r.error["message"]
    assert mgr.config is before_cfg and mgr.state_path.read_bytes() == before_state
    assert publisher.generation == gen and mgr.counters.changes_rejected >= 1
    r = mgr.handle(Request(op=op, args={**args, "force": "yes"}, id=2))
    assert not r.ok and r.error["code"] == "bad-args" and r.error["field"] == "force"
    r = mgr.handle(Request(op=op, args={**args, "force": True}, id=3))
    assert r.ok and r.result["changed"] and publisher.generation == gen + 1, r.error
    assert persist.load_state(mgr.state_path)[0] == mgr.config
    assert not mgr.config.vips or not mgr.config.vips[0].backends


def test_changes_that_keep_something_need_no_force(mgr):
    """Not every removal is emptying: a VIP keeping one backend, a config that replaces
    every VIP by others, a new VIP without backends, and force=false all pass."""
    assert mgr.handle(req("remove-backend", vip=VIP, backend="198.18.1.1", force=False)).ok
    other = {"instance": {"name": "t1", "source_ipv4": "198.18.0.1"},
             "vip": [{"address": "203.0.113.20", "port": 80, "backend": [{"address": "198.18.1.5"}]},
                     {"address": "203.0.113.21", "port": 80}]}
    r = mgr.handle(req("replace-config", config=other))
    assert r.ok and [v.key for v in mgr.config.vips] == ["203.0.113.20:80/tcp", "203.0.113.21:80/tcp"], r.error
    assert mgr.handle(req("add-vip", vip={"address": "203.0.113.22", "port": 80})).ok


def test_reload_of_an_emptied_file_needs_force(mgr):
    mgr.source_path.write_text('[instance]\nname = "t1"\nsource_ipv4 = "198.18.0.1"\n')
    r = mgr.handle(req("reload"))
    assert not r.ok and r.error["code"] == "needs-force" and len(mgr.config.vips) == 1
    r = mgr.handle(req("reload", force=True))
    assert r.ok and mgr.config.vips == ()


def test_error_replies_are_bounded(mgr):
    """An error quotes the caller's input: a 600 kB VIP name or 20,000 config problems
    still give a small reply (the fuzz test found the replies were the memory hog)."""
    r = mgr.handle(req("remove-vip", vip="x" * 600_000))
    assert r.error["code"] == "not-found" and len(r.encode()) < 2000
    r = mgr.handle(req("replace-config", config={f"k{i}": i for i in range(20_000)}))
    assert r.error["code"] == "invalid-config" and len(r.encode()) < 60_000
    # The validator lists 100 problems and a count of the rest (101 lines); the reply keeps
    # 50 of them and says how many it left out.
    assert r.error["details"][-1] == "... and 51 more" and "(and 96 more problems)" in r.error["message"]


@pytest.mark.parametrize("vip", ["203.0.113.10:²", "[2001:db8::10]:٣/tcp", "203.0.113.10:99999999"])
def test_vip_names_with_odd_digits_are_not_found(mgr, vip):
    """str.isdigit() accepts '²' and '٣', int() refuses the first: it was an ``internal``."""
    r = mgr.handle(req("backends", vip=vip))
    assert not r.ok and r.error["code"] == "not-found", r.error


def test_a_config_whose_tables_cannot_be_built_is_invalid(mgr, publisher):
    """Should validation let an address through that the table builder refuses (a scoped
    IPv6 address was one: inet_pton raised OSError), the reply is invalid-config and nothing
    changes -- not internal.  ``apply`` is called directly to get past the validator."""
    import dataclasses

    from maglev.control.protocol import ProtocolError

    def builder(config, down=frozenset()):
        if any("%" in b.address for v in config.vips for b in v.backends):
            raise OSError("illegal IP address string passed to inet_pton")
        return fallback_build_tables(config, down)

    mgr.build_tables = builder
    before, gen, state = mgr.config, publisher.generation, mgr.state_path.read_bytes()
    v = before.vips[0]
    bad = dataclasses.replace(v, backends=(dataclasses.replace(v.backends[0], address="fe80::1%eth0"),))
    with pytest.raises(ProtocolError) as ei:
        mgr.apply(dataclasses.replace(before, vips=(bad,)), "test")
    assert ei.value.code == "invalid-config" and "cannot be built" in ei.value.message
    assert mgr.config is before and publisher.generation == gen and mgr.state_path.read_bytes() == state


def test_atomic_write_makes_a_private_folder(tmp_path):
    p = tmp_path / "state" / "inst" / "config.json"
    persist.atomic_write(p, b"{}")
    assert os.stat(p.parent).st_mode & 0o777 == 0o700 and os.stat(p).st_mode & 0o777 == 0o600
