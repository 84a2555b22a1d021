"""build_tables output pinned byte for byte (golden SHA-256 digests).

The digests were taken from the straightforward implementation (pure-Python SipHash per
backend id, a Python loop remapping every Maglev entry) before it was made fast (C
SipHash, entries remapped by a C helper over the table's buffer); any change to the blob
a config produces is a compatibility change (every instance must build the same tables)
and must show up here.

Re-pinned for tables format version 3 (the maglev pool fields in the header, docs/datapath.md):
the version, the pool offset and the content-derived generation changed in every blob; the
VIP, backend, index, id-map and Maglev bytes did not.
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
        "13b504b0ac10bf4047ef73ceb11f2677c3c948bfc7692e1fc1f9495b0bd78ea1",
    "sample config, explicit generation and MACs":
        "50761c7f94f1c8b1ab7598d9e46797558f223a074ecdbf64bc22cf490ce745b7",
    "1000 backends, mixed weights, some down":
        "4d3294f8a1fcadf9a649de8511f53af1a1bf9ff701413a10a87806bdb2692f94",
    "300 backends v4/v6, python Maglev engine":
        "3cc4145ed8afb033cfd933a8e7aa349baefbb81a9758af5290e2c34f83157cf0",
}


@pytest.mark.parametrize("name", list(CASES))
def test_blob_is_byte_identical_to_the_pinned_implementation(name):
    assert hashlib.sha256(CASES[name]()).hexdigest() == GOLDEN[name]
