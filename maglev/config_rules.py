"""Rules the config validator applies beyond types and ranges: address rules, limits on
the size and shape of a document, and how a hostile value is shown in an error.

The address rules (docs/config.md, "Address rules") say which special-purpose addresses
each role accepts.  A VIP or a backend is a host that packets go to over a routed
network, so it must be a plain unicast address: not unspecified, not broadcast, not
multicast, not loopback, not link-local, not reserved, without a zone index and not an
IPv4-mapped IPv6 address.  Each error names the rule it broke, e.g.::

    vip[0].backend[1].address: '127.0.0.1' is a loopback address (address rule 'loopback'; ...)

Every helper here is bounded: no recursion over user data, no ``repr`` of a value whose
size the user chose.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ---------------------------------------------------------------- document limits

# A config file larger than this is refused before parsing.  The largest config the data
# path can hold (4096 VIPs, 65536 backends) is about 6 MiB of TOML.
MAX_FILE_BYTES = 32 << 20
# The config's deepest legitimate value is 5 levels down (vip -> [i] -> backend -> [j] ->
# key); anything deeper is refused with its path before the validator walks it.
MAX_DEPTH = 8
# Tables, arrays and values in one document (the largest valid config has ~400k).
MAX_NODES = 2_000_000
# Problems listed in one ConfigError; the rest are counted in a last line.
MAX_PROBLEMS = 100
# What the data path's tables hold (MG_TABLES_MAX_VIPS, MG_TABLES_MAX_BACKENDS in
# maglev/_cffi_src/include/mg_tables.h) and, summed over the VIPs, the Maglev table slots
# one copy of the tables may use (4 bytes each: 2 GiB; offsets in the blob are 32-bit).
MAX_VIPS = 4096
MAX_BACKEND_PAIRS = 65536
MAX_TABLE_SLOTS = 1 << 29
# Characters of a string value (names have their own, smaller limit).
MAX_STRING = 4096
# Shown characters of a value quoted in an error message.
SHOW_CHARS = 60

# ---------------------------------------------------------------- address rules

# rule name -> what it forbids (the docs' table is written from this).
ADDRESS_RULES: dict[str, str] = {
    "zone-index": "an IPv6 zone index (fe80::1%eth0): maglev does not bind to interfaces",
    "ipv4-mapped": "IPv4-mapped IPv6 (::ffff:a.b.c.d): write the IPv4 address",
    "unspecified": "the unspecified address 0.0.0.0 or ::",
    "this-network": "0.0.0.0/8 (\"this network\", RFC 1122): not a destination",
    "broadcast": "the limited broadcast address 255.255.255.255",
    "multicast": "multicast (224.0.0.0/4, ff00::/8)",
    "loopback": "loopback (127.0.0.0/8, ::1): never leaves the host",
    "link-local": "link-local (169.254.0.0/16, fe80::/10): needs a zone, not routed",
    "reserved": "240.0.0.0/4 (reserved, dropped by routers and by Linux)",
}

# role -> rules that role does NOT apply (everything else applies).
_ROLE_ALLOWS: dict[str, frozenset[str]] = {
    "vip": frozenset(),
    "backend": frozenset(),  # "loopback" with instance.allow_loopback_backends
    "source": frozenset(),  # instance.source_ipv4/6 and instance.pool: outer source addresses
    "next-hop": frozenset(),
    "peer": frozenset({"loopback"}),  # a BGP peer on the same host (route server, tests)
    "local": frozenset({"loopback"}),  # bgp.peer.local_address
    "listen": frozenset({"loopback", "unspecified"}),  # bgp.listen_address: 0.0.0.0 = every address
    "router-id": frozenset(ADDRESS_RULES) - {"unspecified"},  # an identifier, only 0.0.0.0 is invalid
}
ROLES = tuple(_ROLE_ALLOWS)

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_RESERVED4 = ipaddress.ip_network("240.0.0.0/4")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@functools.lru_cache(maxsize=1 << 16)
def special_classes(ip: IPAddress) -> tuple[tuple[str, str], ...]:
    """Every address rule ``ip`` falls under, as (rule, what it is), most specific first."""
    out: list[tuple[str, str]] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            out.append(("zone-index", f"has a zone index (%{ip.scope_id})"))
        mapped = ip.ipv4_mapped
        if mapped is not None:
            out.append(("ipv4-mapped", f"is an IPv4-mapped IPv6 address; write it as '{mapped}'"))
            return tuple(out)
    if ip.is_unspecified:
        out.append(("unspecified", "is the unspecified address"))
    elif isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK:
        out.append(("this-network", 'is in 0.0.0.0/8 ("this network"), not a destination'))
    elif ip == _BROADCAST:
        out.append(("broadcast", "is the limited broadcast address"))
    elif ip.is_multicast:
        out.append(("multicast", "is a multicast address"))
    elif ip.is_loopback:
        out.append(("loopback", "is a loopback address"))
    elif ip.is_link_local:
        out.append(("link-local", "is a link-local address"))
    elif isinstance(ip, ipaddress.IPv4Address) and ip in _RESERVED4:
        out.append(("reserved", "is in 240.0.0.0/4 (reserved)"))
    return tuple(out)


def address_problem(ip: IPAddress, role: str, allow: frozenset[str] = frozenset()) -> str | None:
    """Why ``ip`` may not be used as ``role`` (a message naming the rule), or None."""
    allowed = _ROLE_ALLOWS[role] | allow
    for rule, what in special_classes(ip):
        if rule in allowed:
            continue
        msg = f"{what} (address rule '{rule}')"
        if rule == "loopback" and role == "backend":
            msg += "; for a single-host test set instance.allow_loopback_backends = true"
        return msg
    return None


# ---------------------------------------------------------------- control endpoints

# A Unix socket path (sun_path) holds 107 bytes and a NUL.
IPC_PATH_MAX = 107


def ipc_path_problem(path: str) -> str | None:
    """Why the path of an ``ipc://`` endpoint cannot be the control socket, or None.  The
    one rule for ``[control] endpoint`` (validator) and the control server's bind, so that
    ``maglev check`` and a ``reload`` refuse what ``maglev run`` would refuse: before, a
    path with a NUL passed the check and a reload, and the next start failed to bind
    ("Address already in use": the kernel read the path up to the NUL, a directory)."""
    if not 0 < len(path.encode("utf-8", "surrogatepass")) <= IPC_PATH_MAX:
        return f"an ipc:// path must be 1-{IPC_PATH_MAX} bytes (a Unix socket path)"
    if path.startswith("@"):
        return "an ipc:// path must be a file path (abstract sockets have no permissions)"
    if any(c < " " or c == "\x7f" for c in path):
        return "an ipc:// path must not hold a control character (a NUL, a newline...)"
    return None


# ---------------------------------------------------------------- showing values


def kind(v: Any) -> str:
    """A value's TOML-ish type name for messages."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "table"
    if isinstance(v, list | tuple):
        return "array"
    return type(v).__name__


def show(v: Any) -> str:
    """``repr`` for a value in an error message, bounded whatever the value: long strings
    are cut, huge integers described, containers named (never walked)."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int):
        if v.bit_length() > 128:
            return f"a {v.bit_length()}-bit integer"
        return repr(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str | bytes):
        if len(v) > SHOW_CHARS:
            return repr(v[:SHOW_CHARS]) + f"... ({len(v)} characters)"
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list | tuple):
        return "an array"
    return f"a {type(v).__name__}"


def show_key(k: Any) -> str:
    """A key as it appears in a path: bare when TOML would write it bare, else quoted with
    escapes (so a key holding a newline still gives a one-line message)."""
    if isinstance(k, str) and k and len(k) <= SHOW_CHARS and all(c.isascii() and (c.isalnum() or c in "_-") for c in k):
        return k
    if isinstance(k, str):
        more = f"...({len(k)} characters)" if len(k) > SHOW_CHARS else ""
        return json.dumps(k[:SHOW_CHARS]) + more
    return f"<{show(k)}>"


def utf8_problem(s: str) -> str | None:
    """Why ``s`` cannot be written as UTF-8 (a lone surrogate from a non-TOML caller)."""
    if s.isascii():
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode text (lone surrogate at character {exc.start})"
    return None


# ---------------------------------------------------------------- document shape


def _link_path(link: Any) -> str:
    parts: list[str] = []
    while link is not None:
        link, key, in_table = link
        parts.append(f".{show_key(key)}" if in_table else f"[{key}]")
    text = "".join(reversed(parts)).lstrip(".")
    return text or "<document>"


def shape_problem(data: Any) -> str | None:
    """``path: message`` when a document is nested deeper than MAX_DEPTH or holds more than
    MAX_NODES values, else None.  Iterative (hostile nesting cannot exhaust the stack), and
    a path is only spelled out for the one value it reports."""
    nodes = 1
    stack: list[tuple[Any, int, Any]] = [(data, 0, None)]
    while stack:
        v, depth, link = stack.pop()
        if isinstance(v, dict):
            children: Any = v.items()
        elif isinstance(v, list | tuple):
            children = enumerate(v)
        else:
            continue
        if depth >= MAX_DEPTH:
            return f"{_link_path(link)}: nested more than {MAX_DEPTH} levels deep"
        nodes += len(v)
        if nodes > MAX_NODES:
            return f"{_link_path(link)}: the document holds more than {MAX_NODES} values"
        in_table = isinstance(v, dict)
        for k, c in children:
            if isinstance(c, dict | list | tuple):
                stack.append((c, depth + 1, (link, k, in_table)))
    return None
