"""Maglev consistent hashing (paper section 3.4): the public surface.

``build_table`` sorts backends by name (bytes of the UTF-8 name), validates, and fills a
prime-size lookup table with the C kernel (``engine="c"``, default) or the pure-Python
reference (``engine="python"``); both give identical tables.  Hashes and seeds are fixed
(``maglev/_cffi_src/include/mg_hash.h``) and pinned by golden vectors in the tests.
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from maglev.errors import ConfigError
from maglev.hashing import reference
from maglev.native import ENGINES

DEFAULT_TABLE_SIZE = 65537
MAX_TABLE_SIZE = 16777213
MAX_BACKENDS = 65536
MAX_WEIGHT = 65535
NO_BACKEND = reference.NO_BACKEND

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "ENGINES",
    "MAX_TABLE_SIZE",
    "MAX_WEIGHT",
    "NO_BACKEND",
    "MaglevTable",
    "build_table",
    "flow_hash_digest",
    "is_prime",
    "next_prime",
]

is_prime = reference.is_prime


def next_prime(n: int) -> int:
    """The smallest prime >= n."""
    n = max(n, 2)
    while not is_prime(n):
        n += 1
    return n


@dataclass(frozen=True)
class MaglevTable:
    """A built table.  ``entries[slot]`` is an index into ``names`` or NO_BACKEND."""

    size: int
    names: tuple[str, ...]
    weights: tuple[int, ...]
    entries: array
    counts: tuple[int, ...]
    build_seconds: float

    def lookup(self, flow_hash: int) -> str | None:
        idx = self.entries[flow_hash % self.size]
        return None if idx < 0 else self.names[idx]

    def fingerprint(
        self, flow_hash_secret: str | bytes | None = None, destinations: Mapping[str, str] | None = None
    ) -> str:
        """A digest of what decides a flow's backend: equal on every instance that sends every
        flow to the same backend (operators compare it across instances; docs/scaleout.md).

        Always the table: size, sorted backend names and weights, every entry.  With
        ``flow_hash_secret`` (32 hex digits or 16 bytes, the SipHash key of the flow hash)
        also :func:`flow_hash_digest` of it -- a keyed digest, never the secret itself -- so
        instances whose flow hashes differ report different fingerprints.  With
        ``destinations`` (backend name -> where its packets go) also those, in name order.
        Without arguments the value is the table-only digest pinned by the golden vectors.
        """
        h = hashlib.sha256()
        h.update(self.size.to_bytes(4, "little"))
        for name, w in zip(self.names, self.weights, strict=True):
            h.update(name.encode() + b"\0" + w.to_bytes(4, "little"))
        h.update(self.entries.tobytes())
        if destinations is not None:
            h.update(b"\0destinations\0")
            for name in self.names:
                h.update(destinations.get(name, "").encode() + b"\0")
        if flow_hash_secret is not None:
            h.update(b"\0flow-hash\0" + flow_hash_digest(flow_hash_secret))
        return h.hexdigest()[:16]

    def share(self) -> dict[str, float]:
        return {n: c / self.size for n, c in zip(self.names, self.counts, strict=True)}


# What the flow hash is: the keyed digest below covers it with the key, so a change of
# scheme (the C kernel's hash or the flow key layout, mg_hash.h / mg_flow.h) changes every
# fingerprint.  Bump it with such a change.
FLOW_HASH_SCHEME = b"maglev flow hash: SipHash-1-3 over struct mg_flow_key (40 bytes), v1"


def flow_hash_digest(secret: str | bytes) -> bytes:
    """BLAKE2b keyed with the flow-hash secret over :data:`FLOW_HASH_SCHEME` (16 bytes).

    Equal secrets give equal digests; the digest does not reveal the secret (a keyed MAC of
    a public message; recovering a 128-bit key from it is a brute-force search).
    """
    key = bytes.fromhex(secret) if isinstance(secret, str) else bytes(secret)
    if len(key) != 16:
        raise ValueError("flow_hash_secret: must be 16 bytes (32 hex digits)")
    return hashlib.blake2b(FLOW_HASH_SCHEME, key=key, digest_size=16).digest()


def _validate(backends: list[tuple[str, int]], size: int, engine: str) -> None:
    problems = []
    if engine not in ENGINES:
        problems.append(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        problems.append(f"table_size: {size!r} must be a prime integer >= 2")
    elif size > MAX_TABLE_SIZE:
        problems.append(f"table_size: {size} exceeds the maximum {MAX_TABLE_SIZE}")
    elif not is_prime(size):
        problems.append(
            f"table_size: {size} is not prime (Maglev needs a prime size; "
            f"the next prime is {next_prime(size)})"
        )
    if len(backends) > MAX_BACKENDS:
        problems.append(f"backends: {len(backends)} exceeds the maximum {MAX_BACKENDS}")
    seen: set[str] = set()
    for i, (name, weight) in enumerate(backends):
        if not isinstance(name, str) or not name:
            problems.append(f"backend[{i}].name: must be a non-empty string")
        elif name in seen:
            problems.append(f"backend[{i}].name: duplicate backend {name!r}")
        else:
            seen.add(name)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
            problems.append(f"backend[{i}].weight: {weight!r} must be an integer 0..{MAX_WEIGHT}")
    if problems:
        raise ConfigError(problems)


def build_table(
    backends: Iterable[tuple[str, int]], size: int = DEFAULT_TABLE_SIZE, engine: str = "c"
) -> MaglevTable:
    """Build the Maglev table for ``(name, weight)`` pairs; the input order does not matter."""
    items = list(backends)
    _validate(items, size, engine)
    items.sort(key=lambda nw: nw[0].encode())
    names = [n.encode() for n, _ in items]
    weights = [w for _, w in items]
    entries = array("i")
    if engine == "c":
        from maglev.hashing import native

        t0 = time.perf_counter()
        table = native.ffi.new("int32_t[]", size)
        counts_c = native.ffi.new("uint32_t[]", max(len(names), 1))
        native.populate_into(size, names, weights, table, counts_c)
        elapsed = time.perf_counter() - t0
        entries.frombytes(native.ffi.buffer(table))
        counts = tuple(counts_c[i] for i in range(len(names)))
    else:
        t0 = time.perf_counter()
        entries.extend(reference.populate(size, names, weights))
        elapsed = time.perf_counter() - t0
        tally = [0] * len(names)
        for e in entries:
            if e >= 0:
                tally[e] += 1
        counts = tuple(tally)
    return MaglevTable(
        size=size,
        names=tuple(n for n, _ in items),
        weights=tuple(weights),
        entries=entries,
        counts=counts,
        build_seconds=elapsed,
    )
