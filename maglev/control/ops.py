"""Config-change operations: pure functions ``(Config, args) -> Config``.

Each change is made on the plain-data form (``Config.to_dict()``) and the result goes
through ``Config.from_dict`` -- the same validator a TOML file meets -- so a change made over
the socket can never produce a config the file could not express, and an invalid change
raises before anything outside this module has seen it.  Nothing here touches tables,
files or sockets: the config manager builds, publishes and persists only what these
functions return.

Arguments are checked strictly (unknown keys and wrong types are ``bad-args``), because a
misspelt argument silently ignored by a load balancer is an outage waiting to happen.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

from maglev.config import Config, Vip, pools_to_plain, trim_plain_vip
from maglev.control import optable
from maglev.control.protocol import (
    BAD_ARGS,
    CONFLICT,
    INVALID_CONFIG,
    NOT_FOUND,
    ProtocolError,
    invalid_config,
)
from maglev.errors import ConfigError
from maglev.hashing import MAX_WEIGHT

# -------------------------------------------------------------------- argument helpers


def check_keys(args: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    for k in args:
        if not isinstance(k, str) or k not in required + optional:
            raise ProtocolError(BAD_ARGS, f"unknown argument {k!r}", str(k))
    for k in required:
        if k not in args:
            raise ProtocolError(BAD_ARGS, f"missing argument {k!r}", k)


def check_args(op: str, args: dict[str, Any]) -> None:
    """``args`` against op ``op``'s row of the one table (maglev/control/optable.py): the
    argument names are written there only.  ``force`` is the config manager's (it strips
    it before a change function runs), so a change function refuses it."""
    row = optable.BY_NAME[op]
    check_keys(args, row.required, tuple(k for k in row.optional if k != "force"))


def arg_str(args: dict[str, Any], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise ProtocolError(BAD_ARGS, f"argument {key!r} must be a non-empty string", key)
    return v


def arg_map(args: dict[str, Any], key: str) -> dict[str, Any]:
    v = args.get(key)
    if not isinstance(v, dict):
        raise ProtocolError(BAD_ARGS, f"argument {key!r} must be a map", key)
    return v


def arg_int(args: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = args.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError(BAD_ARGS, f"argument {key!r} must be an integer", key)
    if not lo <= v <= hi:
        raise ProtocolError(BAD_ARGS, f"argument {key!r}: {v} is out of range {lo}..{hi}", key)
    return v


# -------------------------------------------------------------------- plain data


_FIELDS: dict[type, tuple[str, ...]] = {}
_SCALARS = (str, int, bool, float, type(None))


def _plain(obj: Any) -> Any:
    t = type(obj)
    if t in _SCALARS:
        return obj
    names = _FIELDS.get(t)
    if names is None:
        if not is_dataclass(obj):
            return [_plain(x) for x in obj] if isinstance(obj, tuple | list) else obj
        names = _FIELDS[t] = tuple(f.name for f in fields(obj))
    return {n: _plain(getattr(obj, n)) for n in names}


def plain(config: Config) -> dict[str, Any]:
    """``Config.to_dict()`` without ``dataclasses.asdict``'s deep copies (5x faster for a
    1000-backend config; the values are immutable scalars).  A test pins the equality."""
    d = _plain(config)
    if not d.get("shards"):  # a running instance's config never has shards (validate)
        d.pop("shards", None)
    d["vip"] = d.pop("vips")
    for v in d["vip"]:
        v["backend"] = v.pop("backends")
        trim_plain_vip(v)
    d["bgp"]["peer"] = d["bgp"].pop("peers")
    d["cluster"]["peer"] = d["cluster"].pop("peers")
    return pools_to_plain(d)


# -------------------------------------------------------------------- lookups


def _is_port(text: str) -> bool:
    """ASCII digits only: str.isdigit() is true for '²' and other digits int() refuses."""
    return text.isascii() and text.isdigit() and len(text) <= 5


def _canon_vip_key(text: str) -> tuple[str, int | None, str | None] | None:
    """'203.0.113.1:80/tcp', '[2001:db8::1]:443/tcp', '203.0.113.1' -> (ip, port, proto)."""
    proto = None
    if "/" in text:
        text, proto = text.rsplit("/", 1)
    port = None
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port_s = rest[1:]
            if not _is_port(port_s):
                return None
            port = int(port_s)
    elif text.count(":") == 1:
        host, port_s = text.split(":")
        if not _is_port(port_s):
            return None
        port = int(port_s)
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        return None
    return ip, port, proto


def find_vip(config: Config, key: str, field: str = "vip") -> int:
    """Index of the VIP named ``key``: its exact key, or an address (with optional port or
    protocol) that matches exactly one VIP."""
    for i, v in enumerate(config.vips):
        if v.key == key:
            return i
    parts = _canon_vip_key(key)
    if parts is not None:
        ip, port, proto = parts
        hits = [
            i
            for i, v in enumerate(config.vips)
            if v.address == ip and (port is None or v.port == port) and (proto is None or v.protocol == proto)
        ]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = ", ".join(config.vips[i].key for i in hits)
            raise ProtocolError(BAD_ARGS, f"{key!r} matches several VIPs ({names}); give address:port/protocol", field)
    raise ProtocolError(NOT_FOUND, f"no VIP {key!r}", field)


def find_backend(vip: Vip, key: str, field: str = "backend") -> int:
    """Index of the backend named ``key`` (its name, or its address when unique)."""
    for j, b in enumerate(vip.backends):
        if b.key == key:
            return j
    try:
        ip = str(ipaddress.ip_address(key))
    except ValueError:
        ip = None
    if ip is not None:
        hits = [j for j, b in enumerate(vip.backends) if b.address == ip]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ProtocolError(BAD_ARGS, f"{key!r} matches several backends of {vip.key}; use the name", field)
    raise ProtocolError(NOT_FOUND, f"VIP {vip.key} has no backend {key!r}", field)


# -------------------------------------------------------------------- validation


def validate(data: Any) -> Config:
    """``Config.from_dict`` with its problems turned into an ``invalid-config`` reply."""
    try:
        out = Config.from_dict(data)
    except ConfigError as exc:
        raise invalid_config(exc.problems) from None
    except RecursionError:
        raise ProtocolError(INVALID_CONFIG, "configuration is nested too deeply") from None
    if out.shards:  # a shard's own manager gets its section ($MAGLEV_SHARD): this one is no shard
        raise invalid_config([NOT_A_SHARD])
    return out


NOT_A_SHARD = ("shard: this instance is not a shard of a sharded config; start it with "
               "`maglev run --shard NAME` (or send a config without [[shard]] sections)")


# -------------------------------------------------------------------- the operations


# Each op gets ``base`` = plain(config), shared with the config manager's cache: ops copy
# only the path they change (copy-on-write) and never mutate ``base``.

Base = dict[str, Any] | None


def _with_vip(base: dict[str, Any], i: int, vip: dict[str, Any] | None) -> dict[str, Any]:
    vips = list(base["vip"])
    if vip is None:
        del vips[i]
    else:
        vips[i] = vip
    return {**base, "vip": vips}


def _with_backends(base: dict[str, Any], i: int, backends: list[Any]) -> dict[str, Any]:
    return _with_vip(base, i, {**base["vip"][i], "backend": backends})


def _pooled_backend(config: Config, base: dict[str, Any], i: int, j: int) -> tuple[int, int]:
    """A pooled VIP's backend ``j``: (index in ``base["pool"]``, index in that pool's
    ``backend`` list).  Its pool may serve other VIPs too: a change there is a change for all."""
    vip = config.vips[i]
    key = vip.backends[j].key
    leaf = next(leaf for leaf in vip.leaves if leaf.backend == key)
    k = next(k for k, p in enumerate(base["pool"]) if p["name"] == leaf.path[-1])
    m = next(m for m, b in enumerate(config.pools[k].backends) if b.key == key)
    return k, m


def _with_pool_backends(base: dict[str, Any], k: int, backends: list[Any]) -> dict[str, Any]:
    pools = list(base["pool"])
    pools[k] = {**pools[k], "backend": backends}
    return {**base, "pool": pools}


def replace_config(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    check_args("replace-config", args)
    return validate(arg_map(args, "config"))


def add_vip(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    check_args("add-vip", args)
    new = arg_map(args, "vip")
    base = base if base is not None else plain(config)
    out = validate({**base, "vip": [*base["vip"], new]})
    # from_dict reports duplicates by index; say it in the operator's words instead.
    added = out.vips[-1]
    if any(v.key == added.key for v in config.vips):
        raise ProtocolError(CONFLICT, f"VIP {added.key} already exists", "vip")
    return out


def remove_vip(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    check_args("remove-vip", args)
    i = find_vip(config, arg_str(args, "vip"))
    base = base if base is not None else plain(config)
    return validate(_with_vip(base, i, None))


def update_vip(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    """Change a VIP's settings (not its backends, which have their own ops).  ``set`` holds
    the keys to change; ``set.health`` is merged key by key into the current health check."""
    check_args("update-vip", args)
    i = find_vip(config, arg_str(args, "vip"))
    changes = arg_map(args, "set")
    if "backend" in changes:
        raise ProtocolError(BAD_ARGS, "use add-backend/remove-backend/set-weight to change backends", "set.backend")
    base = base if base is not None else plain(config)
    vip = dict(base["vip"][i])
    for k, v in changes.items():
        if k == "health" and isinstance(v, dict):
            vip["health"] = {**vip["health"], **copy.deepcopy(v)}
        else:
            vip[k] = copy.deepcopy(v)
    return validate(_with_vip(base, i, vip))


def add_backend(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    check_args("add-backend", args)
    i = find_vip(config, arg_str(args, "vip"))
    new = arg_map(args, "backend")
    if config.vips[i].pools:
        raise ProtocolError(BAD_ARGS, f"VIP {config.vips[i].key} takes its backends from pools "
                            f"({', '.join(r.name for r in config.vips[i].pools)}): add the backend to a pool's "
                            "[[pool]] table with maglev ctl apply FILE", "vip")
    base = base if base is not None else plain(config)
    out = validate(_with_backends(base, i, [*base["vip"][i]["backend"], copy.deepcopy(new)]))
    added = out.vips[i].backends[-1]
    if any(b.key == added.key for b in config.vips[i].backends):
        raise ProtocolError(CONFLICT, f"VIP {config.vips[i].key} already has backend {added.key!r}", "backend")
    return out


def remove_backend(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    check_args("remove-backend", args)
    i = find_vip(config, arg_str(args, "vip"))
    j = find_backend(config.vips[i], arg_str(args, "backend"))
    base = base if base is not None else plain(config)
    if config.vips[i].pools:  # out of its pool (for every VIP the pool serves)
        k, m = _pooled_backend(config, base, i, j)
        backends = list(base["pool"][k]["backend"])
        del backends[m]
        return validate(_with_pool_backends(base, k, backends))
    backends = list(base["vip"][i]["backend"])
    del backends[j]
    return validate(_with_backends(base, i, backends))


def set_weight(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    check_args("set-weight", args)
    i = find_vip(config, arg_str(args, "vip"))
    j = find_backend(config.vips[i], arg_str(args, "backend"))
    weight = arg_int(args, "weight", 0, MAX_WEIGHT)
    base = base if base is not None else plain(config)
    if config.vips[i].pools:  # its weight in its pool (for every VIP the pool serves)
        k, m = _pooled_backend(config, base, i, j)
        backends = list(base["pool"][k]["backend"])
        backends[m] = {**backends[m], "weight": weight}
        return validate(_with_pool_backends(base, k, backends))
    backends = list(base["vip"][i]["backend"])
    backends[j] = {**backends[j], "weight": weight}
    return validate(_with_backends(base, i, backends))


def drain(config: Config, args: dict[str, Any], base: Base = None) -> Config:
    """Weight 0: the backend gets no new flows; established flows keep it (conntrack)."""
    check_args("drain", args)
    return set_weight(config, {**args, "weight": 0}, base)


# op name -> function; the config manager adds the ops that need more than the config
# (reload, status, ...).
CHANGES: dict[str, Callable[[Config, dict[str, Any], Base], Config]] = {
    "replace-config": replace_config,
    "add-vip": add_vip,
    "remove-vip": remove_vip,
    "update-vip": update_vip,
    "add-backend": add_backend,
    "remove-backend": remove_backend,
    "set-weight": set_weight,
    "drain": drain,
}
