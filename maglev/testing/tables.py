"""A stand-in table builder for tests of the config manager alone (``ConfigManager(...,
build_tables=fallback_build_tables)``): one Maglev table per VIP as msgpack, easy to read
back in a test.  No worker reads this format; ``maglev run`` always uses the data path's
(``maglev.control.tables.build_tables``)."""

from __future__ import annotations

import msgpack

from maglev.config import Config
from maglev.control.tables import vip_table

FALLBACK_FORMAT = "maglev-control-fallback-1"


def fallback_build_tables(config: Config, down: frozenset[tuple[str, str]] = frozenset()) -> bytes:
    vips = []
    for vip in config.vips:
        t = vip_table(vip, down)
        vips.append({"vip": vip.key, "size": t.size, "backends": list(t.names), "entries": t.entries.tobytes()})
    return msgpack.packb({"format": FALLBACK_FORMAT, "vips": vips}, use_bin_type=True)
