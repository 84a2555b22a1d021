"""Nested pools (docs/config.md "Pools"): tree building, effective weights, backup threshold,
cycles and every other bad pool config with its path-precise error, round trips, and the
flat config unchanged."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest

from maglev.config import Config, dump_toml, loads
from maglev.control.ops import plain
from maglev.errors import ConfigError
from maglev.pools import effective_config, integer_weights, pool_paths, shares

VIP = "203.0.113.10:80/tcp"


def doc(**over):
    d = {
        "instance": {"source_ipv4": "198.18.0.10"},
        "vip": [{"address": "203.0.113.10", "port": 80, "table_size": 251, "pool": [{"name": "web"}]}],
        "pool": [
            {"name": "web", "backup": "dr", "backup_below_percent": 50,
             "pool": [{"name": "eu", "weight": 1}, {"name": "us", "weight": 1}],
             "backend": [{"address": "198.18.1.9", "weight": 2}],
             "health": {"type": "http", "path": "/healthz"}},
            {"name": "eu", "backend": [{"address": "198.18.1.1"}, {"address": "198.18.1.2"}],
             "health": {"type": "tcp"}},
            {"name": "us", "backend": [{"address": "198.18.2.1", "weight": 3}], "health": {"type": "tcp"}},
            {"name": "dr", "backend": [{"address": "198.18.3.1"}],
             "health": {"type": "dns", "port": 53, "query": "example.org"}},
        ],
    }
    d.update(over)
    return d


def errors(d):
    with pytest.raises(ConfigError) as exc:
        Config.from_dict(d)
    return exc.value.problems


def weights(c, down=()):
    e = effective_config(c, frozenset((VIP, b) for b in down))
    return {b.key: b.weight for b in e.vips[0].backends}


def test_tree_is_flattened_with_effective_weights_and_leaf_paths():
    c = Config.from_dict(doc())
    v = c.vips[0]
    # web: 1.9 has 2 of 4, eu and us 1 each; eu splits its quarter in two; dr idles.
    assert {b.key: b.weight for b in v.backends} == {"198.18.1.9": 4, "198.18.1.1": 1, "198.18.1.2": 1,
                                                     "198.18.2.1": 2, "198.18.3.1": 0}
    leaves = {leaf.backend: leaf for leaf in v.leaves}
    assert leaves["198.18.1.1"].path == ("web", "eu") and leaves["198.18.1.1"].health.type == "tcp"
    assert leaves["198.18.1.9"].path == ("web",) and leaves["198.18.1.9"].health.type == "http"
    assert leaves["198.18.3.1"].backup and leaves["198.18.3.1"].health.type == "dns"
    assert leaves["198.18.2.1"].weight == 3  # configured weight in its pool, kept for `ctl backends`
    assert pool_paths(c)[(VIP, "198.18.1.1")] == "web/eu"


def test_shares_are_products_of_weights_down_the_tree():
    c = Config.from_dict(doc())
    s = shares(c.vips[0].pools, {p.name: p for p in c.pools}, lambda b: True)
    assert s == {"198.18.1.9": Fraction(1, 2), "198.18.1.1": Fraction(1, 8), "198.18.1.2": Fraction(1, 8),
                 "198.18.2.1": Fraction(1, 4)}
    assert sum(s.values()) == 1


def test_a_dead_members_share_goes_to_its_live_siblings_in_the_same_pool():
    c = Config.from_dict(doc())
    # 1.1 down: eu's quarter all goes to 1.2; us and 1.9 keep theirs.
    assert weights(c, ["198.18.1.1"]) == {"198.18.1.9": 2, "198.18.1.1": 0, "198.18.1.2": 1,
                                          "198.18.2.1": 1, "198.18.3.1": 0}


def test_backup_serves_only_below_the_threshold_and_takes_the_lost_share():
    c = Config.from_dict(doc())
    # 1.9 down: web's healthy share is exactly 50%: not below the threshold, backup idle.
    assert weights(c, ["198.18.1.9"])["198.18.3.1"] == 0
    # and 1.1: healthy share 1/4 + 1/8 = 37.5% < 50%: backup gets 62.5%, 1.2 and us the rest.
    w = weights(c, ["198.18.1.9", "198.18.1.1"])
    assert w == {"198.18.1.9": 0, "198.18.1.1": 0, "198.18.1.2": 3, "198.18.2.1": 3, "198.18.3.1": 10}
    # every primary down: the backup gets everything
    w = weights(c, ["198.18.1.9", "198.18.1.1", "198.18.1.2", "198.18.2.1"])
    assert w == {"198.18.1.9": 0, "198.18.1.1": 0, "198.18.1.2": 0, "198.18.2.1": 0, "198.18.3.1": 1}
    # the backup down too: nothing serves, an empty table (packets dropped, GLB #77)
    assert set(weights(c, ["198.18.1.9", "198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.3.1"]).values()) == {0}


def test_threshold_100_means_any_loss_spills_to_the_backup():
    d = doc()
    d["pool"][0]["backup_below_percent"] = 100
    c = Config.from_dict(d)
    assert weights(c)["198.18.3.1"] == 0
    w = weights(c, ["198.18.1.2"])  # eu is half up, so web is (2 + 1/2 + 1) / 4 = 7/8 healthy
    assert Fraction(w["198.18.3.1"], sum(w.values())) == Fraction(1, 8)


def test_integer_weights_exact_when_small_scaled_when_not():
    assert integer_weights({"a": Fraction(1, 4), "b": Fraction(1, 4), "c": Fraction(1, 2), "d": Fraction(0)}) == \
        {"a": 1, "b": 1, "c": 2, "d": 0}
    w = integer_weights({"a": Fraction(1, 100_000), "b": Fraction(99_999, 100_000)})
    assert w["b"] == 65535 and w["a"] == 1  # a live backend never rounds to 0


def test_flat_config_is_unchanged():
    flat = {"instance": {"source_ipv4": "198.18.0.10"},
            "vip": [{"address": "203.0.113.10", "port": 80, "backend": [{"address": "198.18.1.1", "weight": 3}]}]}
    c = Config.from_dict(flat)
    assert c.pools == () and c.vips[0].pools == () and c.vips[0].leaves == ()
    d = c.to_dict()
    assert "pool" not in d and "pool" not in d["vip"][0] and "leaves" not in d["vip"][0]
    assert d["vip"][0]["backend"] == [{"address": "198.18.1.1", "weight": 3, "name": "", "mac": ""}]
    assert effective_config(c, frozenset()) is c


def test_pooled_config_round_trips_through_toml_and_plain_data():
    c = Config.from_dict(doc())
    d = c.to_dict()
    assert "backend" not in d["vip"][0] and d["vip"][0]["pool"] == [{"name": "web", "weight": 1}]
    assert [p["name"] for p in d["pool"]] == ["web", "eu", "us", "dr"]
    assert loads(dump_toml(c)) == c
    assert plain(c) == d  # the control plane's fast path gives the same data


def test_cycle_is_named_with_the_edge_that_closes_it():
    d = doc()
    d["pool"][1]["pool"] = [{"name": "web"}]  # eu -> web, and web -> eu
    assert errors(d) == ["pool[1].pool[0].name: pools form a cycle: web -> eu -> web"]


def test_cycle_through_a_backup_edge():
    d = doc()
    d["pool"][3]["backup"] = "web"
    assert errors(d) == ["pool[3].backup: pools form a cycle: web -> dr -> web"]


def test_self_reference_and_long_cycle():
    d = doc()
    d["pool"][2]["pool"] = [{"name": "us"}]
    assert errors(d) == ["pool[2].pool[0].name: pools form a cycle: us -> us"]
    d = doc()
    d["pool"].append({"name": "a", "pool": [{"name": "b"}]})
    d["pool"].append({"name": "b", "pool": [{"name": "c"}]})
    d["pool"].append({"name": "c", "pool": [{"name": "a"}], "backend": [{"address": "198.18.9.1"}]})
    assert errors(d) == ["pool[6].pool[0].name: pools form a cycle: a -> b -> c -> a"]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["vip"][0].update(pool=[{"name": "nope"}]),
     "vip[0].pool[0].name: no pool named 'nope' (pools: dr, eu, us, web)"),
    (lambda d: d["pool"][0].update(backup="nope"),
     "pool[0].backup: no pool named 'nope' (pools: dr, eu, us, web)"),
    (lambda d: d["pool"][0].update(backup="web"), "pool[0].backup: pool 'web' cannot be its own backup"),
    (lambda d: d["pool"][2].update(name="eu"), "pool[2].name: duplicate pool 'eu' (also pool[1])"),
    (lambda d: d["pool"][1].update(name="e u"),
     "pool[1].name: 'e u' must be 1-63 characters of letters, digits, '_', '.', '-'"),
    (lambda d: d["pool"][1].pop("name"), "pool[1].name: is required"),
    (lambda d: d["pool"][2].update(backend=[]), "pool[2]: pool 'us' has no backend and no pool"),
    (lambda d: d["pool"][0].update(backup_below_percent=0), "pool[0].backup_below_percent: 0 is out of range 1..100"),
    (lambda d: d["pool"][0].update(colour="red"), "pool[0].colour: unknown key"),
    (lambda d: d["pool"][1]["backend"].append({"address": "198.18.1.1"}),
     "pool[1].backend[2]: duplicate backend '198.18.1.1' (also backend[0])"),
    (lambda d: d["pool"][2]["backend"].append({"address": "198.18.1.1"}),
     "vip[0]: backend '198.18.1.1' is reached twice (pool[1].backend[0]; pool[2].backend[1])"),
    (lambda d: d["pool"][2].update(pool=[{"name": "eu"}]),
     "vip[0]: pool 'eu' is reached twice (web -> eu; web -> us -> eu): a backend may sit in a VIP's tree only once"),
    (lambda d: d["vip"][0].update(backend=[{"address": "198.18.5.5"}]),
     "vip[0].pool: a VIP has either backends or pools, not both (put the backends in a pool)"),
    (lambda d: d["vip"][0].update(health={"type": "tcp"}),
     "vip[0].health: a VIP with pools takes its health checks from the pools ([pool.health])"),
    (lambda d: d["vip"][0].update(port=0), "pool[0].health.port: is required: vip[0] serves every port (port = 0)"),
    (lambda d: d["vip"][0].update(pool=[]), "vip[0].pool: lists no pool"),
    (lambda d: d["vip"][0].update(pool=[{"name": "web"}, {"name": "web"}]),
     "vip[0].pool[1].name: pool 'web' is listed twice (also pool[0])"),
    (lambda d: d["vip"][0].update(pool=[{"name": "web", "weight": -1}]),
     "vip[0].pool[0].weight: -1 is out of range 0..65535"),
    (lambda d: d["pool"][3]["backend"].append({"address": "203.0.113.10"}),
     "pool[3].backend[1].address: 203.0.113.10 is vip[0]'s address or this instance's source address: "
     "packets would come back to maglev"),
    (lambda d: d["pool"][3]["backend"].append({"address": "2001:db8::5"}),
     "pool[3].backend[1].address: IPv6 backend needs instance.source_ipv6 for gre encapsulation (it serves vip[0])"),
    (lambda d: d["vip"][0].update(table_size=3),
     "vip[0].table_size: 3 slots cannot hold the 5 backends of its pools (use a prime at least 100 times the "
     "number of backends)"),
    (lambda d: d["pool"][3]["health"].update(query="bad name!"),
     "pool[3].health.query: 'bad name!' is not a DNS name (labels of 1-63 letters, digits, '-', '_')"),
])
def test_bad_pool_configs_get_path_precise_errors(mutate, expected):
    d = copy.deepcopy(doc())
    mutate(d)
    assert expected in errors(d)


def test_a_pool_shared_by_two_vips_is_checked_per_vip():
    d = doc()
    d["vip"].append({"address": "203.0.113.11", "port": 53, "protocol": "udp", "table_size": 251,
                     "pool": [{"name": "dr", "weight": 1}]})
    c = Config.from_dict(d)
    assert [b.key for b in c.vips[1].backends] == ["198.18.3.1"] and c.vips[1].backends[0].weight == 1
    assert not c.vips[1].leaves[0].backup  # a backup of web under vip[0], a primary here


def test_backend_ops_on_a_pooled_vip_change_its_pool():
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request
    from maglev.control.publisher import ThreadedPublisher
    from maglev.testing.tables import fallback_build_tables

    with ThreadedPublisher(workers=1) as pub:
        m = ConfigManager(Config.from_dict(doc()), pub, build_tables=fallback_build_tables)
        m._publish_initial()

        def call(op, **args):
            return m.handle(Request(op, args, id=1))

        r = call("drain", vip=VIP, backend="198.18.1.1")
        assert r.ok, r.error
        assert m.config.pools[1].backends[0].weight == 0  # eu's 198.18.1.1, in its pool
        # eu's quarter now all goes to 198.18.1.2
        assert {b.key: b.weight for b in m.config.vips[0].backends}["198.18.1.2"] == 1
        assert {b.key: b.weight for b in m.config.vips[0].backends}["198.18.1.1"] == 0
        r = call("set-weight", vip=VIP, backend="198.18.2.1", weight=7)
        assert r.ok and m.config.pools[2].backends[0].weight == 7
        r = call("remove-backend", vip=VIP, backend="198.18.1.2")
        assert r.ok and [b.key for b in m.config.pools[1].backends] == ["198.18.1.1"]
        assert loads(dump_toml(m.config)) == m.config
        r = call("remove-backend", vip=VIP, backend="198.18.2.1")  # us would be empty
        assert not r.ok and r.error["code"] == "invalid-config"
        assert "pool[2]: pool 'us' has no backend and no pool" in r.error["details"]
        r = call("add-backend", vip=VIP, backend={"address": "198.18.9.9"})
        assert not r.ok and r.error["code"] == "bad-args"
        assert r.error["message"].startswith(f"VIP {VIP} takes its backends from pools (web)")
