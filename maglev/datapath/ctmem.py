"""Connection-table memory: the check before allocating, and the page modes.

``check_memory`` asks the C side (``mg_ct_plan``: /proc/meminfo's MemAvailable, or
HugePages_Free when MAP_HUGETLB is used) whether ``copies`` tables of ``capacity`` entries
fit, and raises :class:`ConntrackMemoryError` naming the numbers when they do not -- before
anything is allocated.  ``mg_ct_new`` applies the same check itself (ENOMEM, nothing
mapped), so no path can allocate a table the machine does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

from maglev.errors import MaglevError
from maglev.native import ffi, lib

# [conntrack] huge_pages -> MG_CT_PAGES_*
PAGE_MODES: dict[str, int] = {"auto": 0, "hugetlb": 1, "thp": 2, "off": 3}
PAGE_MODE_NAMES: dict[int, str] = {1: "hugetlb (MAP_HUGETLB)", 2: "thp (madvise MADV_HUGEPAGE)", 3: "4 KiB pages",
                                   4: "shared (/dev/shm, tmpfs pages)"}
GIB = 1 << 30


class ConntrackMemoryError(MaglevError, MemoryError):
    """The connection tables asked for do not fit in this machine's memory."""


@dataclass(frozen=True)
class Plan:
    capacity: int          # entries after rounding up
    table_bytes: int       # one table's mapping
    mem_available: int     # MemAvailable (bytes)
    huge_free_bytes: int   # HugePages_Free x Hugepagesize
    huge_page_size: int
    mode: str              # "hugetlb", "thp" or "off": what would be used
    ok: bool


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def plan(capacity: int, pages: str = "auto", copies: int = 1) -> Plan:
    if pages not in PAGE_MODES:
        raise ValueError(f"huge_pages {pages!r} is not one of {', '.join(PAGE_MODES)}")
    if not 0 < capacity <= lib.MG_CT_MAX_CAPACITY:
        raise ConntrackMemoryError(f"conntrack.capacity {capacity} is not in 1..{lib.MG_CT_MAX_CAPACITY}")
    out = ffi.new("struct mg_ct_plan *")
    if lib.mg_ct_plan(capacity, PAGE_MODES[pages], max(1, copies), out) < 0:
        raise ValueError(f"conntrack: bad capacity {capacity} or copies {copies}")
    mode = {v: k for k, v in PAGE_MODES.items()}[int(out.mode)]
    return Plan(int(out.capacity), int(out.table_bytes), int(out.mem_available),
                int(out.huge_free_bytes), int(out.huge_page_size), mode, bool(out.ok))


def check_memory(capacity: int, pages: str = "auto", copies: int = 1) -> Plan:
    """The plan, or ConntrackMemoryError (a clear message with the numbers) if it does not fit."""
    p = plan(capacity, pages, copies)
    if p.ok:
        return p
    per = f"{p.capacity} entries ({_gib(p.table_bytes)} per table"
    per += f" x {copies} workers = {_gib(p.table_bytes * copies)})" if copies > 1 else ")"
    if p.mode == "hugetlb":
        pages_needed = p.table_bytes // p.huge_page_size * copies
        raise ConntrackMemoryError(
            f"conntrack.capacity = {capacity}: {per} needs {pages_needed} huge pages of "
            f"{p.huge_page_size >> 20} MiB, but HugePages_Free is {p.huge_free_bytes // p.huge_page_size} "
            f"({_gib(p.huge_free_bytes)}); reserve more (sysctl vm.nr_hugepages) or set "
            f"conntrack.huge_pages = \"auto\"")
    raise ConntrackMemoryError(
        f"conntrack.capacity = {capacity}: {per} does not fit in MemAvailable "
        f"{_gib(p.mem_available)}; lower conntrack.capacity or the number of workers")


def page_mode_name(ct) -> str:
    return PAGE_MODE_NAMES.get(int(lib.mg_ct_page_mode(ct)), "?")
