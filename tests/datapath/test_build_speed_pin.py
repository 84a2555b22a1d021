"""build_tables output pinned byte for byte (golden SHA-256 digests).

The digests were taken from the straightforward implementation (pure-Python SipHash per
backend id, a Python loop remapping every Maglev entry) before it was made fast (C
SipHash, entries remapped by a C helper over the table's buffer); any change to the blob
a config produces is a compatibility change (every instance must build the same tables)
and must show up here.

Re-pinned for tables format version 3 (the maglev pool fields in the header, docs/datapath.md):
the version, the pool offset and the content-derived generation changed in every blob; the
VIP, backend, index, id-map and Maglev bytes did not.

Re-pinned for tables format version 4 (per-VIP hashing flags and a priority byte taken
from the VIP record's reserved bytes, zero for these configs): compared byte by byte with
the version-3 blobs of the same configs, only the version (byte 4) and the content-derived
generation (bytes 16-23) differ.
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
        "a335c96bb028efbdc63d2a817a45231a30d6d71cae9f8b742e5c9b5d8ec1bd15",
    "sample config, explicit generation and MACs":
        "c483d71d375b5ae220f6f9be445beedbf49e0226925632e53535322595372a34",
    "1000 backends, mixed weights, some down":
        "85d59af5e7f5d1feb9ca3b5f4e316430af8675ec76f112b725f56ac14a594497",
    "300 backends v4/v6, python Maglev engine":
        "10b762826fdda58504e4cc8ab9cc610fe63e76f73cf164d6165056fbcdcc8331",
}


@pytest.mark.parametrize("name", list(CASES))
def test_blob_is_byte_identical_to_the_pinned_implementation(name):
    assert hashlib.sha256(CASES[name]()).hexdigest() == GOLDEN[name]
