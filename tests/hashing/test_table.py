"""Basic Maglev table behaviour: engines agree, balance, errors, the CLI's JSON."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from maglev.errors import ConfigError
from maglev.hashing import NO_BACKEND, build_table, next_prime
from maglev_cli.main import cli


def names(n: int) -> list[tuple[str, int]]:
    return [(f"198.18.{i // 256}.{i % 256}", 1) for i in range(n)]


def test_engines_build_identical_tables():
    backends = names(37) + [("heavy", 3), ("off", 0)]
    c = build_table(backends, 1009, "c")
    py = build_table(backends, 1009, "python")
    assert c.entries == py.entries
    assert c.counts == py.counts
    assert c.fingerprint() == py.fingerprint()


def test_single_backend_fills_table():
    t = build_table([("only", 1)], 251)
    assert set(t.entries) == {0}
    assert t.counts == (251,)


def test_equal_weights_balance_within_one_entry():
    t = build_table(names(1000), 65537)
    assert max(t.counts) - min(t.counts) <= 1
    assert sum(t.counts) == 65537


def test_listing_order_does_not_matter():
    b = names(50)
    assert build_table(b, 1009).entries == build_table(list(reversed(b)), 1009).entries


def test_weight_zero_backend_gets_nothing_and_all_zero_means_empty():
    t = build_table([("a", 1), ("b", 0)], 101)
    assert t.counts == (101, 0)
    empty = build_table([("a", 0), ("b", 0)], 101)
    assert set(empty.entries) == {NO_BACKEND}
    assert empty.lookup(12345) is None


def test_no_backends_gives_empty_table():
    t = build_table([], 101)
    assert set(t.entries) == {NO_BACKEND}


@pytest.mark.parametrize(
    "size, message",
    [
        (100, "table_size: 100 is not prime (Maglev needs a prime size; the next prime is 101)"),
        (1, "table_size: 1 must be a prime integer >= 2"),
        (16777259, "table_size: 16777259 exceeds the maximum 16777213"),
    ],
)
def test_bad_sizes_are_rejected_with_a_clear_message(size, message):
    with pytest.raises(ConfigError) as exc:
        build_table(names(3), size)
    assert exc.value.problems == [message]


def test_duplicate_names_and_bad_weights_are_rejected():
    with pytest.raises(ConfigError) as exc:
        build_table([("a", 1), ("a", 2), ("b", -1), ("c", True)], 101)
    assert exc.value.problems == [
        "backend[1].name: duplicate backend 'a'",
        "backend[2].weight: -1 must be an integer 0..65535",
        "backend[3].weight: True must be an integer 0..65535",
    ]


def test_next_prime():
    assert next_prime(65536) == 65537
    assert next_prime(655370) == 655373


def test_cli_table_json_reports_balance():
    r = CliRunner().invoke(cli, ["table", "--backends", "1000", "--size", "65537", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["size"] == 65537 and out["backends"] == 1000
    assert out["entries_max"] - out["entries_min"] <= 1
    assert out["entries_total"] == 65537
    assert out["build_ms"] > 0


def test_cli_table_config_builds_one_table_per_vip(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        """
[instance]
source_ipv4 = "198.18.0.10"
[[vip]]
address = "203.0.113.10"
port = 80
table_size = 1009
  [[vip.backend]]
  address = "198.18.1.11"
  [[vip.backend]]
  address = "198.18.1.12"
  weight = 3
[[vip]]
address = "203.0.113.11"
table_size = 101
  [[vip.backend]]
  address = "198.18.1.13"
"""
    )
    r = CliRunner().invoke(cli, ["table", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["vip"] for row in rows] == ["203.0.113.10:80/tcp", "203.0.113.11:0/tcp"]
    assert rows[0]["entries_total"] == 1009 and rows[1]["entries_max"] == 101


def test_cli_table_bad_size_is_one_line_and_exit_2():
    r = CliRunner().invoke(cli, ["table", "--backends", "3", "--size", "100"])
    assert r.exit_code == 2
    assert "table_size: 100 is not prime" in r.output
    assert "Traceback" not in r.output
