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
from maglev.datapath.tables import tables_size
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


def blob_size(config: Config) -> int:
    """The size in bytes of :func:`build_tables`'s blob for ``config``, without building it
    (what a change needs of a run's tables area)."""
    return tables_size(config)


# The least room a run's tables area gets for one copy of the tables (docs/operations.md):
# sparse in /dev/shm, so it costs only what a publication writes.  256 MiB holds the tables
# of 4 VIPs at the largest table_size, or ~1000 at the default one.
TABLES_AREA_MIN = 256 << 20


def tables_area(start_bytes: int, state_path: str | None) -> int:
    """The room ``maglev run`` gives one copy of the tables: twice the larger of the tables
    it starts with (``start_bytes``) and those of the accepted config in ``state_path``
    (which the config manager resumes when the file is unchanged: a change applied with
    ``ctl`` and refused ``needs-restart`` fits after the restart), at least
    :data:`TABLES_AREA_MIN`.  A state file that cannot be read counts for nothing here
    (the config manager says what is wrong with it)."""
    need = start_bytes
    if state_path:
        from maglev.control import persist
        from maglev.errors import ConfigError

        try:
            state = persist.load_state(state_path)
        except (ConfigError, OSError):
            state = None
        if state is not None:
            need = max(need, blob_size(state[0]))
    return max(2 * need, TABLES_AREA_MIN)
