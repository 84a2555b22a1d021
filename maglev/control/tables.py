"""The one seam between the config manager and the table format.

The data path owns the shared-memory table format (``maglev.datapath.tables.build_tables``);
the control plane reaches it only through :func:`build_tables` below.  (Tests of the
config manager alone may pass a stand-in builder: ``maglev.testing.tables``.)

``down`` is a frozenset of ``(vip key, backend key)``: backends the health prober found
dead.  They are left out of the table exactly like a removed backend; a VIP whose every
backend is down or drained gets a table of NO_BACKEND entries, so the data path drops its
packets instead of sending them to a dead backend (GLB Director issue #77).
"""

from __future__ import annotations

from maglev.config import Config, Vip
from maglev.datapath.tables import build_tables as datapath_build_tables
from maglev.hashing import MaglevTable, build_table


def live_backends(vip: Vip, down: frozenset[tuple[str, str]]) -> list[tuple[str, int]]:
    key = vip.key
    return [(b.key, b.weight) for b in vip.backends if (key, b.key) not in down]


def vip_table(vip: Vip, down: frozenset[tuple[str, str]]) -> MaglevTable:
    return build_table(live_backends(vip, down), vip.table_size)


def destinations(vip: Vip) -> dict[str, str]:
    """Backend name -> where the VIP sends its packets (encapsulation, address, and the
    MAC / VXLAN settings where they apply): the part of the fingerprint beyond the table."""
    out = {}
    for b in vip.backends:
        d = f"{vip.encap} {b.ip}"
        if vip.encap in ("l2", "vxlan"):
            d += f" mac={b.mac.lower()}"
        if vip.encap == "vxlan":
            d += f" vni={vip.vxlan_vni} port={vip.vxlan_port}"
        out[b.key] = d
    return out


def vip_fingerprint(vip: Vip, table: MaglevTable, flow_hash_secret: str) -> str:
    """The fingerprint ``maglev ctl status`` and ``maglev table --config`` report for a VIP:
    its table, where each backend's packets go and a keyed digest of the flow-hash secret."""
    return table.fingerprint(flow_hash_secret, destinations(vip))


def build_tables(config: Config, down: frozenset[tuple[str, str]] = frozenset()) -> bytes:
    """The shared-memory tables blob of ``config`` (the data path's format)."""
    return datapath_build_tables(config, down=down)
