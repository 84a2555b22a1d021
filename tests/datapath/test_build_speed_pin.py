"""build_tables output pinned byte for byte (golden SHA-256 digests).

The digests were taken from the straightforward implementation (pure-Python SipHash per
backend id, a Python loop remapping every Maglev entry) before it was made fast (C
SipHash, entries remapped by a C helper over the table's buffer); any change to the blob
a config produces is a compatibility change (every instance must build the same tables)
and must show up here.
"""

from __future__ import annotations

import hashlib

import pytest

from maglev import config as cfg
from maglev.datapath.tables import build_tables

from .dp_helpers import DOWN, config


def _big(n: int, v6: bool = False) -> cfg.Config:
    text = '[instance]\nsource_ipv4 = "198.18.0.1"\nsource_ipv6 = "2001:db8:1::1"\n'
    text += '[[vip]]\naddress = "203.0.113.10"\nport = 80\nprotocol = "tcp"\ntable_size = 65537\n'
    for i in range(n):
        addr = f"2001:db8:9::{i + 1:x}" if v6 and i % 2 else f"198.18.{10 + i // 250}.{1 + i % 250}"
        text += f'[[vip.backend]]\naddress = "{addr}"\nweight = {i % 4}\n'
    text += '[[vip]]\naddress = "2001:db8:f::10"\nport = 443\nprotocol = "tcp"\ntable_size = 1009\n'
    text += '[[vip.backend]]\naddress = "2001:db8:2::1"\n[[vip.backend]]\naddress = "2001:db8:2::2"\n'
    return cfg.loads(text)


CASES = {
    "sample config with a VIP down": lambda: build_tables(config(), DOWN),
    "sample config, explicit generation and MACs": lambda: build_tables(
        config(), generation=42, own_mac="02:00:00:00:00:01", gateway_mac="02:00:00:00:00:02"),
    "1000 backends, mixed weights, some down": lambda: build_tables(
        _big(1000), frozenset({("203.0.113.10:80/tcp", f"198.18.10.{i}") for i in range(1, 40, 3)})),
    "300 backends v4/v6, python Maglev engine": lambda: build_tables(_big(300, v6=True), engine="python"),
}

GOLDEN = {
    "sample config with a VIP down":
        "72058d5165a3164f52c3d6286d8eff5b4c24c5118f3114e36c8359ff1317522c",
    "sample config, explicit generation and MACs":
        "a8ccd75d66c5469ff4b3e5bb5f92a99eb056ca8a61bb637b007e2267e28358b4",
    "1000 backends, mixed weights, some down":
        "dd217198b12ccaa4058b314ea9e9a11f71771cc6c3c955353daef64407f28e26",
    "300 backends v4/v6, python Maglev engine":
        "4406cb8d4a373182df10590bb829a74cb5e7c6a640863ba7717fd5d6c56aa640",
}


@pytest.mark.parametrize("name", list(CASES))
def test_blob_is_byte_identical_to_the_pinned_implementation(name):
    assert hashlib.sha256(CASES[name]()).hexdigest() == GOLDEN[name]
