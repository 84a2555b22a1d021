"""The configuration model: TOML in, validated frozen dataclasses out.

Config is data and tables are derived from it: the config manager is the only writer.
Validation collects *every* problem, each as ``path: message`` with the exact path
(``vip[1].backend[0].address: '10.0.0.x' is not an IP address``), and raises one
:class:`ConfigError`; nothing is ever half-applied.  ``Config.to_dict()`` and
``Config.from_dict()`` round-trip, and ``dump_toml`` (``tomli-w``) writes a file ``load`` reads back, so
the accepted config can be persisted and reloaded.

Unknown keys are errors: a typo in a load balancer's config must not be silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from maglev.config_model import (  # the data model, re-exported: maglev.config is its public name
    DEFAULT_FLOW_HASH_SECRET,
    Backend,
    HealthCheck,
    Instance,
    Pool,
    PoolRef,
    Quic,
    Vip,
    _ip_address,
)
from maglev.config_model import (
    IPAddress as IPAddress,
)
from maglev.config_model import (
    Leaf as Leaf,
)
from maglev.config_pools import resolve as resolve_pools
from maglev.config_rules import (
    MAX_BACKEND_PAIRS,
    MAX_FILE_BYTES,
    MAX_PROBLEMS,
    MAX_STRING,
    MAX_TABLE_SLOTS,
    MAX_VIPS,
    address_problem,
    ipc_path_problem,
    shape_problem,
    show,
    show_key,
    utf8_problem,
)
from maglev.errors import ConfigError
from maglev.hashing import DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, MAX_WEIGHT, is_prime, next_prime

PROTOCOLS = ("tcp", "udp")
ENCAPS = ("gre", "ipip", "vxlan", "l2")
HASH_MODES = ("5tuple", "src_ip", "dst_port")  # [[vip]] hash (docs/datapath.md)
HEALTH_TYPES = ("none", "tcp", "http", "udp", "dns")
HUGE_PAGE_MODES = ("auto", "hugetlb", "thp", "off")  # [conntrack] huge_pages
MAX_VIP_PRIORITY = 7  # [[vip]] priority: 0 (default, shed first) .. 7 (MG_VIP_MAX_PRIORITY)

# Most maglev instances in instance.pool (the tables blob has room for this many).
MAX_POOL = 64

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
# An HTTP health-check path goes into the request line as is: no spaces, no control
# characters, nothing outside printable ASCII (percent-encode the rest).
_HTTP_PATH_RE = re.compile(r"/[\x21-\x7e]*")
# A DNS health check's query name: "." (the root) or dotted labels, at most 253 characters.
_DNS_NAME_RE = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                          r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")
# AS_TRANS (RFC 6793): stands in for a 4-octet AS toward old speakers, never a real AS.
AS_TRANS = 23456
_TCP_ENDPOINT_RE = re.compile(r"(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.:-]+):(\*|[0-9]{1,5})")
_SCALARS = frozenset({str, int, bool, float})
_LOOPBACK = frozenset({"loopback"})
_NOTHING: frozenset[str] = frozenset()
_BACKEND_MEMO: dict[tuple[Any, ...], Any] = {}  # validated Backend by _backend_memo_key
_BACKEND_MEMO_MAX = 1 << 17


def _backend_memo_key(data: Any, encap: str, allow_loopback: bool) -> tuple[Any, ...] | None:
    if type(data) is not dict:
        return None
    key = (encap, allow_loopback, *((k, type(v), v) for k, v in data.items()))
    # Only plain values: a list or table is invalid anyway (validate normally), and
    # hashing a deeply nested tuple would recurse.
    if not all(type(v) in _SCALARS for v in data.values()):
        return None
    try:
        hash(key)
    except TypeError:
        return None
    return key


@dataclass(frozen=True)
class Conntrack:
    capacity: int = 65536  # entries per worker, rounded up to a power of two
    tcp_timeout_s: int = 300
    udp_timeout_s: int = 30
    protected_percent: int = 90  # quota of the protected (established) segment, % of capacity
    new_flows_per_s: int = 0  # per-worker rate guard on inserts of new flows; 0 = no limit
    huge_pages: str = "auto"  # auto | hugetlb | thp | off (maglev/datapath/ctmem.py)
    # Tables in /dev/shm, kept across a worker's restart and adopted by the next run of the
    # same instance (maglev/rings/conntrack_shm.py); false: private memory of the worker.
    shared: bool = True


@dataclass(frozen=True)
class BgpPeer:
    address: str
    asn: int
    port: int = 179
    hold_time: int = 90
    passive: bool = False
    local_address: str = ""  # source address of our connections to this peer; empty = kernel's choice
    bfd: bool = False  # run a BFD session (RFC 5880/5881) beside the BGP session


@dataclass(frozen=True)
class Bgp:
    local_asn: int = 0  # 0 = BGP disabled
    router_id: str = ""
    next_hop_ipv4: str = ""  # empty = the session's local address (next-hop self)
    next_hop_ipv6: str = ""
    listen_port: int = 179  # 0 = do not listen (active sessions only)
    peers: tuple[BgpPeer, ...] = ()
    listen_address: str = ""  # empty = every address
    connect_retry_time: int = 30  # seconds (RFC 4271 suggests 120; a VIP should come back sooner)
    graceful_restart_time: int = 0  # seconds routers keep our routes after the speaker dies (RFC 4724); 0 = off
    bfd_interval_ms: int = 300  # BFD DesiredMinTx = RequiredMinRx once Up
    bfd_multiplier: int = 3  # BFD Detect Mult: the peer declares us down after this many lost intervals
    bfd_port: int = 3784  # RFC 5881; only tests change it


@dataclass(frozen=True)
class Control:
    endpoint: str = ""  # empty = ipc:// socket under the run directory
    events_endpoint: str = ""
    server_secret_key_file: str = ""  # CURVE, required for tcp://
    authorized_keys_file: str = ""


@dataclass(frozen=True)
class HealthSettings:
    """``[health]``: how the config manager treats backends the prober has not judged yet."""

    initial: str = "up"  # "up": serve at once; "unknown": no traffic before a first good probe


@dataclass(frozen=True)
class Tracing:
    otlp_endpoint: str = ""
    packet_sample_rate: int = 0  # 1 in N packets traced; 0 = off


# VIP matching across clusters (paper 4.2; docs/config.md "VIP matching across clusters").
MAX_CLUSTER_PEERS = 16  # MG_TABLES_MAX_CLUSTERS - 1
MAX_CLUSTER_FORWARDERS = 16  # per peer cluster
_CLUSTER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class ClusterPeer:
    """Another cluster: its VIP prefixes (one per family) and its maglev forwarders (where
    backup traffic is sent in GRE, and the only sources whose GRE is accepted from it)."""

    name: str
    prefixes: tuple[str, ...] = ()
    forwarders: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cluster:
    """This cluster's VIP prefixes (one per family), the other clusters, and the order in
    which they take a local VIP's packets when it has no healthy backend."""

    name: str = ""
    prefixes: tuple[str, ...] = ()
    backup: tuple[str, ...] = ()
    peers: tuple[ClusterPeer, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.prefixes)


@dataclass(frozen=True)
class Shard:
    """One ``[[shard]]`` section: an isolated forwarder of its own (docs/config.md, "Shards")."""

    name: str
    cpus: str = ""  # CPU list like "0-1" or "2,3"; required when the file has 2+ shards
    workers: int = 0  # 0 = `maglev run --workers`
    metrics: str = ""  # ADDR:PORT of this shard's Prometheus endpoint; "" = none
    nic: str = ""  # this shard's --nic (e.g. afpacket:eth1); "" = `maglev run --nic` (default gen)
    vips: tuple[Vip, ...] = ()
    bgp: Bgp = field(default_factory=Bgp)
    control: Control = field(default_factory=Control)


# Set by `maglev run --shard NAME` for itself and every actor it starts: loading a file with
# [[shard]] sections then yields that shard's own config (validating only the shared
# sections and that shard's section).  maglev/shards.py.
SHARD_ENV = "MAGLEV_SHARD"
SHARD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Config:
    instance: Instance = field(default_factory=Instance)
    conntrack: Conntrack = field(default_factory=Conntrack)
    vips: tuple[Vip, ...] = ()
    bgp: Bgp = field(default_factory=Bgp)
    control: Control = field(default_factory=Control)
    tracing: Tracing = field(default_factory=Tracing)
    pools: tuple[Pool, ...] = ()  # [[pool]] (docs/config.md "Pools")
    health: HealthSettings = field(default_factory=HealthSettings)
    # [[shard]] sections (a whole sharded file, loaded without MAGLEV_SHARD); a shard's own
    # config (Config.shard_config) has none.
    shards: tuple[Shard, ...] = ()
    # [cluster] (docs/config.md "VIP matching across clusters"); not in sharded files yet.
    cluster: Cluster = field(default_factory=Cluster)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the TOML file's shape (``vip`` arrays, ``backend`` arrays)."""
        d = asdict(self)
        d["instance"]["pool"] = list(d["instance"]["pool"])
        d["vip"] = [_vip_dict(v) for v in d.pop("vips")]
        d["bgp"]["peer"] = list(d["bgp"].pop("peers"))
        c = d["cluster"]
        c["prefixes"], c["backup"] = list(c["prefixes"]), list(c["backup"])
        c["peer"] = [{**pp, "prefixes": list(pp["prefixes"]), "forwarders": list(pp["forwarders"])}
                     for pp in c.pop("peers")]
        shards = d.pop("shards")
        if shards:  # a sharded file keeps VIPs, BGP and control in its shards
            del d["vip"], d["bgp"], d["control"], d["cluster"]
            d["shard"] = []
            for s in shards:
                s["vip"] = [_vip_dict(v) for v in s.pop("vips")]
                s["bgp"]["peer"] = list(s["bgp"].pop("peers"))
                d["shard"].append(s)
        return pools_to_plain(d)

    @classmethod
    def from_dict(cls, data: Any, shard: str | None = None) -> Config:
        """Validate plain data (a parsed TOML file, a control request); ConfigError lists
        every problem.  Never another exception, whatever ``data`` holds.

        ``shard`` (default: $MAGLEV_SHARD) picks one shard of a document with ``[[shard]]``
        sections: only the shared sections and that shard's section are validated and its
        own config is returned.  A document without shards ignores it."""
        if shard is None:
            shard = os.environ.get(SHARD_ENV) or None
        # The parser reads only the keys it knows and never walks or prints a value it
        # did not ask for, so hostile nesting costs nothing; this is a last guard.
        try:
            return _Parser(shard or None).config(data)
        except RecursionError:
            raise ConfigError(["<document>: nested too deeply"]) from None

    def shard(self, name: str) -> Shard:
        for s in self.shards:
            if s.name == name:
                return s
        raise KeyError(name)

    def shard_config(self, name: str) -> Config:
        """The config shard ``name`` runs: the shared sections, its VIPs, BGP and control,
        and the instance name ``<instance.name>-<shard>`` (its own run folder, shared-memory
        region, connection tables and state)."""
        s = self.shard(name)
        return Config(
            instance=replace(self.instance, name=shard_instance_name(self.instance.name, name)),
            conntrack=self.conntrack, vips=s.vips, bgp=s.bgp, control=s.control, tracing=self.tracing,
            health=self.health,
        )

    def vip(self, key: str) -> Vip:
        for v in self.vips:
            if v.key == key:
                return v
        raise KeyError(key)

    @property
    def flow_hash_key(self) -> tuple[int, int]:
        raw = bytes.fromhex(self.instance.flow_hash_secret)
        return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def _vip_dict(v: dict[str, Any]) -> dict[str, Any]:
    out = dict(v)
    out["backend"] = list(out.pop("backends"))
    trim_plain_vip(out)
    return out


def trim_plain_vip(v: dict[str, Any]) -> None:
    """Leave the QUIC keys out of a plain VIP that does not use them (the file's shape)."""
    if not v["quic"]["server_id_length"]:
        del v["quic"]
    for b in v["backend"]:
        if not b["quic_server_id"]:
            del b["quic_server_id"]


def cpu_list(text: str) -> list[int] | None:
    """``"0,2-3"`` -> [0, 2, 3]; None when it is not a CPU list (no check of what exists)."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([0-9]{1,4})(?:-([0-9]{1,4}))?\s*", part)
        if not m:
            return None
        lo, hi = int(m[1]), int(m[2] or m[1])
        if lo > hi:
            return None
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def shard_instance_name(instance: str, shard: str) -> str:
    """The instance name a shard runs as (run folder, region, control socket, state)."""
    return f"{instance}-{shard}"


def _source(path: str | Path) -> str:
    """A file name for a one-line message: as is, or quoted when it holds control characters."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a config file, at most MAX_FILE_BYTES; ConfigError when it cannot be
    read (missing, a directory, a FIFO or a device, no permission) or is too large."""
    from maglev import files

    p = _source(path)
    try:
        return files.read_regular(path, MAX_FILE_BYTES)
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except files.NotRegularFile as exc:
        what = "Is a directory" if exc.what == "a directory" else \
            f"{exc.what}, not a config file" if exc.what else "not a regular file"
        raise ConfigError([f"{p}: cannot read: {what}"]) from None
    except files.FileTooLarge:
        raise ConfigError([f"{p}: larger than {MAX_FILE_BYTES >> 20} MiB; not a maglev config"]) from None
    except ValueError:  # a NUL in the path
        raise ConfigError([f"{p}: cannot read: the path holds a NUL character"]) from None


def check_rereadable(path: str | Path) -> None:
    """ConfigError when ``path`` is readable only with root's DAC override, which ``maglev
    run`` drops after its start although its config manager reads the file again then (at
    its start, at every reload): ``maglev check`` and ``maglev run`` say so in one line
    instead of the run failing later (maglev/service/privileges.py)."""
    from maglev.service.privileges import unreadable_without_dac

    why = unreadable_without_dac(path)
    if why:
        raise ConfigError([f"{_source(path)}: cannot read without CAP_DAC_OVERRIDE: {why} (maglev run drops "
                           "that capability after its start and reads the file again then, and at every "
                           "reload: make it readable by its user itself, e.g. chown or chmod u+r)"])


SAMPLE_CONFIG = Path(__file__).resolve().parent / "data" / "sample.toml"


def load_config(path: str | Path | None) -> Config:
    """The config at ``path``, or the built-in sample when ``path`` is empty."""
    return load(path or SAMPLE_CONFIG)


def parse_document(raw: bytes | str, source: str = "<string>") -> dict[str, Any]:
    """TOML bytes (UTF-8, an optional byte-order mark) or text to plain data, not yet
    validated.  Every failure is one ConfigError line naming ``source``."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"{source}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"]
            ) from None
    else:
        text = raw
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([f"{source}: larger than {MAX_FILE_BYTES >> 20} MiB; not a maglev config"])
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError([f"{source}: TOML syntax error: {msg}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: TOML syntax error: arrays or inline tables nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        msg = " ".join(str(exc).split(";")[0].split())[:120]
        raise ConfigError([f"{source}: TOML syntax error: unusable value ({msg})"]) from None
    why = shape_problem(data)  # [a.b.c.d.e.f.g.h.i] tables: deep, yet TOML-valid
    if why:
        raise ConfigError([why])
    return data


def read_document(path: str | Path) -> dict[str, Any]:
    """A config file as plain data (what ``maglev ctl apply`` sends), not yet validated."""
    return parse_document(read_bytes(path), _source(path))


def load_shard(path: str | Path, name: str) -> tuple[Config, Shard]:
    """Shard ``name`` of a sharded file: its own config and its ``[[shard]]`` settings.
    Only the shared sections and that shard's section are validated."""
    data = read_document(path)
    try:
        whole = _Parser(name, whole=True).config(data)
    except RecursionError:
        raise ConfigError(["<document>: nested too deeply"]) from None
    if not whole.shards:
        raise ConfigError([f"{_source(path)}: has no [[shard]] sections (--shard {name})"])
    return whole.shard_config(name), whole.shards[0]


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    return Config.from_dict(read_document(path))


def load_forwarder(path: str | Path, shard: str | None = None) -> Config:
    """One forwarder's config, for the offline commands (replay, whereis, table): the
    file's, or shard ``shard``'s of a sharded file.  A sharded file without ``shard`` is
    refused: its top level has no VIP, so `whereis` answered ``no_vip`` and `replay`
    dropped every packet for VIPs the file does have, in its shards."""
    if shard:
        return load_shard(path, shard)[0]
    c = load(path)
    if c.shards:
        names = ", ".join(repr(s.name) for s in c.shards)
        raise ConfigError([f"{_source(path)}: has [[shard]] sections ({names}), each its own forwarder "
                           "with its own VIPs: give --shard NAME"])
    return c


def loads(text: str | bytes, source: str = "<string>") -> Config:
    """Validate a TOML document given as text (or UTF-8 bytes)."""
    return Config.from_dict(parse_document(text, source))


def pools_to_plain(d: dict[str, Any]) -> dict[str, Any]:
    """The pool parts of plain data in the file's shape: ``[[pool]]`` (only when there are
    pools, so a flat config's data is as before), a pooled VIP's ``pool`` refs instead of
    its derived ``backend`` list, and never the derived ``leaves``; ``[health]`` only when
    it is not the default."""
    if d.get("health") == {"initial": "up"}:
        del d["health"]
    pools = d.pop("pools", [])
    for v in d.get("vip", []):
        refs = v.pop("pools", [])
        v.pop("leaves", None)
        if refs:
            v["pool"] = [dict(r) for r in refs]
            v.pop("backend", None)
    for sh in d.get("shard", []):
        for v in sh["vip"]:  # a shard's VIPs have no pools (refused by the parser)
            v.pop("pools", None)
            v.pop("leaves", None)
    if pools:
        d["pool"] = []
        for p in pools:
            q = dict(p)
            q["backend"] = [{k: x for k, x in b.items() if k != "quic_server_id" or x} for b in q.pop("backends")]
            q["pool"] = [dict(r) for r in q.pop("pools")]
            d["pool"].append(q)
    return d


# --------------------------------------------------------------------------- parsing


class _Parser:
    """Collects problems while walking the data; raises once at the end."""

    def __init__(self, shard: str | None = None, whole: bool = False) -> None:
        self.selected = shard  # the one [[shard]] section to validate (None: all of them)
        self.whole = whole  # with a selected shard: return the file's Config holding just it
        self.problems: list[str] = []
        self.n_problems = 0
        self.allow_loopback = False

    def err(self, path: str, msg: str) -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path}: {msg}")

    def fail(self) -> None:
        if self.n_problems:
            more = self.n_problems - len(self.problems)
            if more:
                self.problems.append(f"<document>: {more} more problems not listed")
            raise ConfigError(self.problems)

    def table(self, data: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.err(path, f"must be a table, not {type(data).__name__}")
            return {}
        for k in data:
            if k not in allowed:
                self.err(f"{path}.{show_key(k)}" if path else show_key(k), "unknown key")
        return data

    def array(self, data: Any, path: str) -> list[Any]:
        if not isinstance(data, list | tuple):
            self.err(path, f"must be an array of tables, not {type(data).__name__}")
            return []
        return list(data)

    def integer(self, d: dict[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
        v = d.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool):
            self.err(f"{path}.{key}", f"{show(v)} is not an integer")
            return default
        if not lo <= v <= hi:
            self.err(f"{path}.{key}", f"{show(v)} is out of range {lo}..{hi}")
            return default
        return v

    def string(self, d: dict[str, Any], key: str, path: str, default: str) -> str:
        v = d.get(key, default)
        if not isinstance(v, str):
            self.err(f"{path}.{key}", f"{show(v)} is not a string")
            return default
        if len(v) > MAX_STRING:
            self.err(f"{path}.{key}", f"is longer than {MAX_STRING} characters")
            return default
        why = utf8_problem(v)
        if why:
            self.err(f"{path}.{key}", why)
            return default
        return v

    def boolean(self, d: dict[str, Any], key: str, path: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.err(f"{path}.{key}", f"{show(v)} is not true or false")
            return default
        return v

    def choice(self, d: dict[str, Any], key: str, path: str, default: str, options: tuple[str, ...]) -> str:
        v = self.string(d, key, path, default)
        if v not in options:
            self.err(f"{path}.{key}", f"{show(v)} is not one of {', '.join(options)}")
            return default
        return v

    def ip(
        self, d: dict[str, Any], key: str, path: str, required: bool, version: int = 0, role: str = "vip",
    ) -> str:
        """An IP address under ``key``, canonical, obeying the address rules of ``role``
        (maglev/config_rules.py); "" when absent or invalid (the problem is recorded)."""
        if key not in d:
            if required:
                self.err(f"{path}.{key}", "is required")
            return ""
        return self.address(d[key], f"{path}.{key}", required, version, role)

    def address(self, v: Any, path: str, required: bool, version: int, role: str) -> str:
        if not isinstance(v, str):
            self.err(path, f"{show(v)} is not an IP address")
            return ""
        if v == "" and not required:
            return ""
        try:
            ip = _ip_address(v)
        except ValueError:
            self.err(path, f"{show(v)} is not an IP address")
            return ""
        if version and ip.version != version:
            self.err(path, f"{show(v)} is not an IPv{version} address")
            return ""
        why = address_problem(ip, role, _LOOPBACK if role == "backend" and self.allow_loopback else _NOTHING)
        if why:
            self.err(path, f"{show(v)} {why}")
            return ""
        return str(ip)

    # -- sections ---------------------------------------------------------------

    def config(self, data: Any) -> Config:
        top = self.table(
            data, "", {"instance", "conntrack", "vip", "bgp", "control", "tracing", "shard", "pool", "health",
                       "cluster"}
        )
        if "shard" in top:
            return self.sharded(top)
        instance = self.instance(top.get("instance", {}))
        conntrack = self.conntrack(top.get("conntrack", {}))
        pools, vips = self.vip_list(top.get("vip", []), "vip", instance, top.get("pool"))
        bgp = self.bgp(top.get("bgp", {}))
        control = self.control(top.get("control", {}))
        tracing = self.tracing(top.get("tracing", {}))
        health = self.health_settings(top)
        cluster = self.cluster(top.get("cluster", {}), instance, vips)
        self.fail()
        return Config(instance, conntrack, vips, bgp, control, tracing, pools=pools, health=health, cluster=cluster)

    def vip_list(self, raw: Any, p: str, instance: Instance,
                 raw_pools: Any = None) -> tuple[tuple[Pool, ...], tuple[Vip, ...]]:
        """The ``[[vip]]`` array at path ``p`` (``vip`` or ``shard[i].vip``), and the
        ``[[pool]]`` array its VIPs point at (top-level files only, config_pools.py)."""
        raw_vips = self.array(raw, p)
        if len(raw_vips) > MAX_VIPS:
            self.err(p, f"{len(raw_vips)} VIPs; the data path holds at most {MAX_VIPS}")
            raw_vips = []
        vips = tuple(self.vip(v, f"{p}[{i}]", instance) for i, v in enumerate(raw_vips))
        pools: tuple[Pool, ...] = ()
        if raw_pools is not None or any(v.pools for v in vips):
            if p != "vip":  # not yet: a shard's VIPs would need the pools' paths per shard
                self.err(p, "pools ([[pool]], vip.pool) are not supported in a file with [[shard]] sections yet")
            else:
                pools, vips = resolve_pools(self, raw_pools or [], vips, raw_vips, instance)
        seen: dict[str, int] = {}
        for i, v in enumerate(vips):
            if not v.address:
                continue
            if v.key in seen:
                self.err(f"{p}[{i}]", f"duplicate VIP {v.key} (also {p}[{seen[v.key]}])")
            seen.setdefault(v.key, i)
        self.combinations(instance, vips, p)
        return pools, vips

    # -- VIP matching across clusters (paper 4.2) -----------------------------------

    def prefixes(self, d: dict[str, Any], path: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``prefixes``: at most one network per family, no host bits, room for a suffix."""
        raw = d.get("prefixes", [])
        if not isinstance(raw, list | tuple):
            self.err(f"{path}.prefixes", f"must be an array of prefixes, not {type(raw).__name__}")
            return []
        if len(raw) > 2:
            self.err(f"{path}.prefixes", f"{len(raw)} prefixes; at most one IPv4 and one IPv6")
            return []
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for i, v in enumerate(raw):
            pp = f"{path}.prefixes[{i}]"
            if not isinstance(v, str) or "/" not in v or len(v) > 64:
                self.err(pp, f"{show(v)} is not a prefix (ADDRESS/LENGTH)")
                continue
            try:
                net = ipaddress.ip_network(v, strict=False)
            except ValueError:
                self.err(pp, f"{show(v)} is not a prefix (ADDRESS/LENGTH)")
                continue
            if net.network_address != ipaddress.ip_interface(v).ip:
                self.err(pp, f"{show(v)} has host bits set (the prefix is {net})")
                continue
            if not 8 <= net.prefixlen <= net.max_prefixlen - 1:
                self.err(pp, f"{show(v)}: a cluster prefix is /8../{net.max_prefixlen - 1} "
                             f"(it must leave room for the services' suffixes)")
                continue
            if any(n.version == net.version for n in nets):
                self.err(pp, f"a second IPv{net.version} prefix; one per family")
                continue
            nets.append(net)
        return nets

    def cluster(self, data: Any, instance: Instance, vips: tuple[Vip, ...]) -> Cluster:
        """``[cluster]``: VIP matching across clusters.  Every rule that makes a mapping
        ambiguous or impossible is an error with its path (docs/config.md)."""
        p = "cluster"
        d = self.table(data, p, {"name", "prefixes", "backup", "peer"})
        if not any(d.get(k) for k in ("name", "prefixes", "backup", "peer")):
            return Cluster()  # absent, or the empty table to_dict() writes for "off"
        name = self.string(d, "name", p, "")
        if not _CLUSTER_NAME_RE.fullmatch(name):
            self.err(f"{p}.name", f"{show(name)} must be 1-32 of a-z 0-9 _ - (starting with a letter or digit)")
        local = self.prefixes(d, p)
        if not local:
            self.err(f"{p}.prefixes", "is required: this cluster's VIP prefix (one per family)")
        local_by_fam = {n.version: n for n in local}
        owner: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
            (n, f"{p}.prefixes[{i}]") for i, n in enumerate(local)]
        raw_peers = self.array(d.get("peer", []), f"{p}.peer")
        if len(raw_peers) > MAX_CLUSTER_PEERS:
            self.err(f"{p}.peer", f"{len(raw_peers)} peer clusters; at most {MAX_CLUSTER_PEERS}")
            raw_peers = []
        peers: list[ClusterPeer] = []
        names = {name: p}
        for i, raw in enumerate(raw_peers):
            pp = f"{p}.peer[{i}]"
            pd = self.table(raw, pp, {"name", "prefixes", "forwarders"})
            pname = self.string(pd, "name", pp, "")
            if not _CLUSTER_NAME_RE.fullmatch(pname):
                self.err(f"{pp}.name", f"{show(pname)} must be 1-32 of a-z 0-9 _ - (starting with a letter or digit)")
            elif pname in names:
                self.err(f"{pp}.name", f"{show(pname)} is also the name of {names[pname]}")
            names.setdefault(pname, pp)
            nets = self.prefixes(pd, pp)
            if not nets:
                self.err(f"{pp}.prefixes", "is required: the cluster's VIP prefix (one per family)")
            for j, n in enumerate(nets):
                path = f"{pp}.prefixes[{j}]"
                mine = local_by_fam.get(n.version)
                if mine is None:
                    self.err(path, f"{n} has no IPv{n.version} prefix of this cluster to map to "
                                   f"(add one to {p}.prefixes)")
                elif mine.prefixlen != n.prefixlen:
                    self.err(path, f"{n} is a /{n.prefixlen} but {p}.prefixes has {mine}: a service's "
                                   f"suffix must have the same length in every cluster")
                for other, where in owner:
                    if other.version == n.version and other.overlaps(n):
                        self.err(path, f"{n} overlaps {where} ({other})")
                owner.append((n, path))
            fwd_raw = pd.get("forwarders", [])
            if not isinstance(fwd_raw, list | tuple):
                self.err(f"{pp}.forwarders", f"must be an array of IP addresses, not {type(fwd_raw).__name__}")
                fwd_raw = []
            if len(fwd_raw) > MAX_CLUSTER_FORWARDERS:
                self.err(f"{pp}.forwarders", f"{len(fwd_raw)} forwarders; at most {MAX_CLUSTER_FORWARDERS}")
                fwd_raw = []
            # Same shape as instance.pool's loop (_Parser.pool): a list of unique addresses,
            # but each element has its own rule (a forwarder needs our source of its family);
            # kept apart on purpose.
            fwds: list[str] = []
            for j, v in enumerate(fwd_raw):
                a = self.address(v, f"{pp}.forwarders[{j}]", True, 0, "backend")
                if not a:
                    continue
                if a in fwds:
                    self.err(f"{pp}.forwarders[{j}]", f"{show(v)} is listed twice")
                    continue
                fam = _ip_address(a).version
                if not (instance.source_ipv4 if fam == 4 else instance.source_ipv6):
                    self.err(f"{pp}.forwarders[{j}]", f"an IPv{fam} forwarder needs instance.source_ipv{fam} "
                                                      f"(the outer source of GRE to and from it)")
                fwds.append(a)
            peers.append(ClusterPeer(name=pname, prefixes=tuple(str(n) for n in nets), forwarders=tuple(fwds)))
        backup_raw = d.get("backup", [])
        if not isinstance(backup_raw, list | tuple):
            self.err(f"{p}.backup", f"must be an array of peer cluster names, not {type(backup_raw).__name__}")
            backup_raw = []
        by_name = {pc.name: pc for pc in peers}
        backup: list[str] = []
        for j, v in enumerate(backup_raw):
            bp = f"{p}.backup[{j}]"
            if not isinstance(v, str) or v not in by_name:
                self.err(bp, f"{show(v)} is not the name of a {p}.peer")
            elif v in backup:
                self.err(bp, f"{show(v)} is listed twice")
            elif not by_name[v].forwarders:
                self.err(bp, f"{show(v)} has no forwarders to send backup traffic to")
            else:
                backup.append(v)
        # A local VIP inside another cluster's prefix would be both "ours" and "theirs".
        for i, v in enumerate(vips):
            if not v.address:
                continue
            ip = _ip_address(v.address)
            for n, where in owner:
                if n.version == ip.version and ip in n and not where.startswith(f"{p}.prefixes"):
                    self.err(f"vip[{i}].address", f"{v.address} is inside {where} ({n}), another "
                                                  f"cluster's prefix")
        return Cluster(name=name, prefixes=tuple(str(n) for n in local), backup=tuple(backup), peers=tuple(peers))

    def sharded(self, top: dict[str, Any]) -> Config:
        """A document with ``[[shard]]`` sections (docs/config.md, "Shards").  Without a
        selected shard every section is validated, and checked against the others
        (overlapping VIPs, CPUs, control sockets, metrics and BGP listeners are errors);
        with one (``maglev run --shard``, a shard's reload) only the shared sections and
        that shard's section are, so a bad section of another shard cannot stop it."""
        for key, what in (("vip", "[[shard.vip]]"), ("bgp", "[shard.bgp]"), ("control", "[shard.control]")):
            if key in top:
                self.err(key, f"a file with [[shard]] sections keeps this in each shard ({what})")
        if "pool" in top:
            self.err("pool", "pools are not supported in a file with [[shard]] sections yet")
        if "cluster" in top:  # not yet: the peers' prefixes would be checked against every shard's VIPs
            self.err("cluster", "VIP matching ([cluster]) is not supported in a file with [[shard]] sections yet")
        instance = self.instance(top.get("instance", {}))
        conntrack = self.conntrack(top.get("conntrack", {}))
        tracing = self.tracing(top.get("tracing", {}))
        health = self.health_settings(top)
        raw = self.array(top["shard"], "shard")
        if not raw:
            self.err("shard", "is empty: give at least one [[shard]] section or none at all")
        names: dict[str, int] = {}
        for i, r in enumerate(raw):
            n = r.get("name") if isinstance(r, dict) else None
            if isinstance(n, str) and n not in names:
                names[n] = i
        if self.selected is not None:
            if self.selected not in names:
                self.err("shard", f"no shard named {show(self.selected)} (the file has: "
                         f"{', '.join(sorted(map(show, names))) or 'none'})")
                self.fail()
            i = names[self.selected]
            s = self.shard(raw[i], f"shard[{i}]", instance)
            self.fail()
            whole = Config(instance, conntrack, (), Bgp(), Control(), tracing, health=health, shards=(s,))
            return whole if self.whole else whole.shard_config(s.name)
        shards = tuple(self.shard(r, f"shard[{i}]", instance) for i, r in enumerate(raw))
        self.across_shards(shards)
        self.fail()
        return Config(instance, conntrack, (), Bgp(), Control(), tracing, health=health, shards=shards)

    def shard(self, data: Any, p: str, instance: Instance) -> Shard:
        d = self.table(data, p, {"name", "cpus", "workers", "metrics", "nic", "vip", "bgp", "control"})
        name = self.string(d, "name", p, "")
        if "name" not in d:
            self.err(f"{p}.name", "is required")
        elif not SHARD_NAME_RE.fullmatch(name):
            self.err(f"{p}.name", f"{show(name)} must be 1-32 characters of letters, digits, '_', '-'")
        elif len(shard_instance_name(instance.name, name)) > 63:
            self.err(f"{p}.name", f"instance.name + '-' + {show(name)} is longer than 63 characters")
        cpus = self.string(d, "cpus", p, "")
        if cpus and cpu_list(cpus) is None:
            self.err(f"{p}.cpus", f"{show(cpus)} is not a CPU list like '0-1' or '2,3'")
        metrics = self.string(d, "metrics", p, "")
        if metrics and not re.fullmatch(r"[^\s:]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}", metrics):
            self.err(f"{p}.metrics", f"{show(metrics)} must be ADDR:PORT")
            metrics = ""
        nic = self.string(d, "nic", p, "")
        if nic:
            from maglev.nic import NicSpecError, parse_nic

            try:
                parse_nic(nic)
            except NicSpecError as exc:
                self.err(f"{p}.nic", str(exc).removeprefix(f"--nic {nic}: "))
                nic = ""
        return Shard(
            name=name,
            cpus=cpus,
            workers=self.integer(d, "workers", p, 0, 0, 64),
            metrics=metrics,
            nic=nic,
            vips=self.vip_list(d.get("vip", []), f"{p}.vip", instance)[1],
            bgp=self.bgp(d.get("bgp", {}), f"{p}.bgp"),
            control=self.control(d.get("control", {}), f"{p}.control"),
        )

    def across_shards(self, shards: tuple[Shard, ...]) -> None:
        """What two shards may not share: a name, a VIP (same address and protocol, ports
        equal or either 0 = every port), a CPU, a control or events socket, a metrics
        address, a BGP listener."""
        first: dict[str, int] = {}
        for i, s in enumerate(shards):
            if s.name and s.name in first:
                self.err(f"shard[{i}].name", f"duplicate shard {show(s.name)} (also shard[{first[s.name]}])")
            first.setdefault(s.name, i)
        owner: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        for i, s in enumerate(shards):
            for j, v in enumerate(s.vips):
                if not v.address:
                    continue
                for (oi, oj, port) in owner.get((v.address, v.protocol), []):
                    if oi != i and (port == v.port or 0 in (port, v.port)):
                        self.err(f"shard[{i}].vip[{j}]", f"VIP {v.key} overlaps shard[{oi}].vip[{oj}] "
                                 f"({shards[oi].vips[oj].key}, shard {show(shards[oi].name)}): "
                                 "each VIP belongs to one shard")
                        break
                owner.setdefault((v.address, v.protocol), []).append((i, j, v.port))
        cpu_owner: dict[int, int] = {}
        for i, s in enumerate(shards):
            if not s.cpus:
                if len(shards) > 1:
                    self.err(f"shard[{i}].cpus", "is required with more than one shard (each shard gets its own cores)")
                continue
            for c in cpu_list(s.cpus) or []:
                if c in cpu_owner and cpu_owner[c] != i:
                    self.err(f"shard[{i}].cpus", f"CPU {c} is also shard[{cpu_owner[c]}].cpus "
                             f"(shard {show(shards[cpu_owner[c]].name)}): shards do not share cores")
                    break
                cpu_owner[c] = i
        seen: dict[str, str] = {}

        def unique(value: str, path: str, what: str) -> None:
            if value in seen:
                self.err(path, f"{what} {show(value)} is also {seen[value]}")
            else:
                seen[value] = path

        for i, s in enumerate(shards):
            for key in ("endpoint", "events_endpoint"):
                if ep := getattr(s.control, key):
                    unique(ep, f"shard[{i}].control.{key}", "endpoint")
            if s.metrics:
                unique(s.metrics, f"shard[{i}].metrics", "metrics address")
            if s.nic and not s.nic.startswith(("gen", "pcap:")):  # an interface belongs to one shard
                unique(s.nic.split(",")[0], f"shard[{i}].nic", "NIC")
            if s.bgp.peers and s.bgp.listen_port:
                unique(f"[{s.bgp.listen_address or '*'}]:{s.bgp.listen_port}", f"shard[{i}].bgp.listen_port",
                       "BGP listener")

    def combinations(self, instance: Instance, vips: tuple[Vip, ...], vp: str = "vip") -> None:
        """Checks across VIPs: what the data path can hold, and backends that would send
        packets straight back to this maglev."""
        pairs = sum(len(v.backends) for v in vips)
        if pairs > MAX_BACKEND_PAIRS:
            self.err(vp, f"{pairs} (VIP, backend) pairs; the data path holds at most {MAX_BACKEND_PAIRS}")
        slots = sum(v.table_size for v in vips)
        if slots > MAX_TABLE_SLOTS:
            self.err(vp, f"the VIPs' table_size values add up to {slots} slots; at most {MAX_TABLE_SLOTS}")
        own: dict[str, str] = {}  # address -> what it is here
        for i, v in reversed(list(enumerate(vips))):  # the first VIP with an address wins
            if v.address:
                own[v.address] = f"a VIP of this config ({vp}[{i}])"
        for key in ("source_ipv4", "source_ipv6"):
            if addr := getattr(instance, key):
                own[addr] = f"this instance's own source address (instance.{key})"
        for i, v in enumerate(vips):
            if v.pools:
                continue  # checked where each pool backend is (maglev/config_pools.py)
            for j, b in enumerate(v.backends):
                if b.address in own:
                    self.err(f"{vp}[{i}].backend[{j}].address",
                             f"{b.address} is {own[b.address]}: packets would come back to maglev")

    def instance(self, data: Any) -> Instance:
        p = "instance"
        d = self.table(
            data, p,
            {"name", "source_ipv4", "source_ipv6", "mtu", "flow_hash_secret", "pool", "allow_loopback_backends"},
        )
        name = self.string(d, "name", p, "mg1")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
            self.err(f"{p}.name", f"{show(name)} must be 1-63 characters of letters, digits, '_', '.', '-'")
        secret = self.string(d, "flow_hash_secret", p, DEFAULT_FLOW_HASH_SECRET)
        if not re.fullmatch(r"[0-9a-fA-F]{32}", secret):
            self.err(f"{p}.flow_hash_secret", "must be exactly 32 hex digits (128 bits)")
            secret = DEFAULT_FLOW_HASH_SECRET
        source_ipv4 = self.ip(d, "source_ipv4", p, False, 4, "source")
        source_ipv6 = self.ip(d, "source_ipv6", p, False, 6, "source")
        self.allow_loopback = self.boolean(d, "allow_loopback_backends", p, False)
        return Instance(
            name=name,
            source_ipv4=source_ipv4,
            source_ipv6=source_ipv6,
            mtu=self.integer(d, "mtu", p, 1500, 576, 9216),
            flow_hash_secret=secret.lower(),
            pool=self.pool(d, p, source_ipv4, source_ipv6),
            allow_loopback_backends=self.allow_loopback,
        )

    def pool(self, d: dict[str, Any], p: str, source_ipv4: str, source_ipv6: str) -> tuple[str, ...]:
        """``instance.pool``: distinct addresses of one family, at most MAX_POOL, this
        instance's source address of that family among them (it must know which member
        it is).  Kept in the file's order; the tables blob sorts it."""
        raw = d.get("pool", [])
        if not isinstance(raw, list | tuple):
            self.err(f"{p}.pool", f"must be an array of IP addresses, not {type(raw).__name__}")
            return ()
        if len(raw) > MAX_POOL:
            self.err(f"{p}.pool", f"{len(raw)} addresses; at most {MAX_POOL}")
            return ()
        # Same shape as [[cluster.peer]] forwarders' loop; the rules differ (one family, our
        # own address included): kept apart on purpose.
        out: list[str] = []
        families: set[int] = set()
        for i, v in enumerate(raw):
            addr = self.address(v, f"{p}.pool[{i}]", True, 0, "source")
            if not addr:
                continue
            if addr in out:
                self.err(f"{p}.pool[{i}]", f"{show(v)} is listed twice")
                continue
            families.add(_ip_address(addr).version)
            out.append(addr)
        if len(families) > 1:
            self.err(f"{p}.pool", "mixes IPv4 and IPv6 addresses; use one family")
            return ()
        if out and len(out) == len(raw):
            fam = families.pop()
            own = source_ipv4 if fam == 4 else source_ipv6
            if not own:
                self.err(f"{p}.pool", f"an IPv{fam} pool needs instance.source_ipv{fam} (this instance's member)")
            elif own not in out:
                self.err(f"{p}.pool", f"must include this instance's source_ipv{fam} {own}")
        return tuple(out)

    def conntrack(self, data: Any) -> Conntrack:
        p = "conntrack"
        d = self.table(
            data, p,
            {"capacity", "tcp_timeout_s", "udp_timeout_s", "protected_percent", "new_flows_per_s", "huge_pages",
             "shared"},
        )
        shared = self.boolean(d, "shared", p, True)
        huge = self.choice(d, "huge_pages", p, "auto", HUGE_PAGE_MODES)
        if shared and huge == "hugetlb":
            self.err(f"{p}.huge_pages", "\"hugetlb\" needs conntrack.shared = false (shared tables live in "
                     "/dev/shm, on tmpfs pages)")
        return Conntrack(
            capacity=self.integer(d, "capacity", p, 65536, 64, 1 << 26),
            tcp_timeout_s=self.integer(d, "tcp_timeout_s", p, 300, 1, 86400),
            udp_timeout_s=self.integer(d, "udp_timeout_s", p, 30, 1, 86400),
            protected_percent=self.integer(d, "protected_percent", p, 90, 1, 100),
            new_flows_per_s=self.integer(d, "new_flows_per_s", p, 0, 0, 1_000_000_000),
            huge_pages=huge,
            shared=shared,
        )

    def health(self, data: Any, p: str) -> HealthCheck:
        d = self.table(
            data,
            p,
            {"type", "port", "path", "expect_status", "send", "expect", "interval_ms", "timeout_ms", "rise", "fall",
             "query", "through_tunnel"},
        )
        h = HealthCheck(
            type=self.choice(d, "type", p, "none", HEALTH_TYPES),
            port=self.integer(d, "port", p, 0, 0, 65535),
            path=self.string(d, "path", p, "/"),
            expect_status=self.integer(d, "expect_status", p, 200, 100, 599),
            send=self.string(d, "send", p, ""),
            expect=self.string(d, "expect", p, ""),
            interval_ms=self.integer(d, "interval_ms", p, 1000, 50, 3_600_000),
            timeout_ms=self.integer(d, "timeout_ms", p, 500, 10, 600_000),
            rise=self.integer(d, "rise", p, 2, 1, 100),
            fall=self.integer(d, "fall", p, 3, 1, 100),
            query=self.string(d, "query", p, "."),
            through_tunnel=self.boolean(d, "through_tunnel", p, False),
        )
        if h.query != "." and not _DNS_NAME_RE.fullmatch(h.query):
            self.err(f"{p}.query", f"{show(h.query)} is not a DNS name (labels of 1-63 letters, digits, '-', '_')")
        if not h.path.startswith("/"):
            self.err(f"{p}.path", f"{show(h.path)} must start with '/'")
        elif not _HTTP_PATH_RE.fullmatch(h.path):
            self.err(f"{p}.path", f"{show(h.path)} must be printable ASCII without spaces (percent-encode the rest)")
        return h

    def vip(self, data: Any, p: str, instance: Instance) -> Vip:
        d = self.table(
            data,
            p,
            {"address", "port", "protocol", "encap", "table_size", "allow_fragments", "vxlan_vni", "vxlan_port", "health", "backend",
             "hash", "udp_ignore_src_port", "conntrack", "quic", "pool", "priority"},
        )
        address = self.ip(d, "address", p, True, 0, "vip")
        size = self.integer(d, "table_size", p, DEFAULT_TABLE_SIZE, 2, MAX_TABLE_SIZE)
        if not is_prime(size):
            self.err(f"{p}.table_size", f"{size} is not prime (the next prime is {next_prime(size)})")
        encap = self.choice(d, "encap", p, "gre", ENCAPS)
        raw_backends = self.array(d.get("backend", []), f"{p}.backend")
        if len(raw_backends) > MAX_BACKEND_PAIRS:
            self.err(f"{p}.backend", f"{len(raw_backends)} backends; the data path holds at most {MAX_BACKEND_PAIRS}")
            raw_backends = []
        backends = tuple(self.backend(b, f"{p}.backend[{j}]", encap) for j, b in enumerate(raw_backends))
        seen: dict[str, int] = {}
        for j, b in enumerate(backends):
            if not b.address:
                continue
            if b.key in seen:
                self.err(f"{p}.backend[{j}]", f"duplicate backend {show(b.key)} (also backend[{seen[b.key]}])")
            seen.setdefault(b.key, j)
            fam = b.ip.version
            if encap in ("gre", "ipip", "vxlan"):
                src = instance.source_ipv4 if fam == 4 else instance.source_ipv6
                if not src:
                    self.err(
                        f"{p}.backend[{j}].address",
                        f"IPv{fam} backend needs instance.source_ipv{fam} for {encap} encapsulation",
                    )
            if encap == "l2" and address and fam != _ip_address(address).version:
                self.err(f"{p}.backend[{j}].address", "encap 'l2' needs a backend of the VIP's address family")
            # Checked here, not only by the table build: `maglev check`, a reload and
            # `maglev run` must give the same verdict as loading the file (a hypothesis run
            # found a config the loader took and the build refused).
            mac_path = f"{p}.backend[{j}].mac"
            if encap == "l2" and not b.mac and not any(q.startswith(mac_path + ":") for q in self.problems):
                self.err(mac_path, "required for encap 'l2'")
        # Every serving backend needs at least one slot of the Maglev table.
        serving = sum(1 for b in backends if b.weight > 0)
        if serving > size and is_prime(size):
            self.err(f"{p}.table_size", f"{size} slots cannot hold {serving} backends with weight > 0 "
                                        f"(use a prime at least 100 times the number of backends)")
        n0 = self.n_problems
        quic = self.quic(d["quic"], f"{p}.quic") if "quic" in d else Quic()
        quic_ok = self.n_problems == n0
        vip = Vip(
            address=address,
            port=self.integer(d, "port", p, 0, 0, 65535),
            protocol=self.choice(d, "protocol", p, "tcp", PROTOCOLS),
            encap=encap,
            table_size=size,
            allow_fragments=self.boolean(d, "allow_fragments", p, True),
            vxlan_vni=self.integer(d, "vxlan_vni", p, 1, 0, (1 << 24) - 1),
            vxlan_port=self.integer(d, "vxlan_port", p, 4789, 1, 65535),
            health=self.health(d.get("health", {}), f"{p}.health"),
            backends=backends,
            hash=self.choice(d, "hash", p, "5tuple", HASH_MODES),
            udp_ignore_src_port=self.boolean(d, "udp_ignore_src_port", p, False),
            conntrack=self.boolean(d, "conntrack", p, True),
            quic=quic,
            pools=self.pool_refs(d, p) if "pool" in d else (),
            priority=self.integer(d, "priority", p, 0, 0, MAX_VIP_PRIORITY),
        )
        self.hashing(d, vip, p)
        if quic_ok:
            self.quic_ids(vip, p)
        self.tunnel_check(vip.health, f"{p}.health", vip, vip.backends, p)
        if "pool" in d and "backend" in d:
            self.err(f"{p}.pool", "a VIP has either backends or pools, not both (put the backends in a pool)")
        if "pool" in d and vip.health.type != "none":
            self.err(f"{p}.health", "a VIP with pools takes its health checks from the pools ([pool.health])")
        # A probe needs a port: a VIP that serves every port (port 0) must name one.
        if vip.health.type != "none" and not vip.health.port and not vip.port:
            self.err(f"{p}.health.port", "is required when the VIP serves every port (port = 0)")
        return vip

    def health_settings(self, top: dict[str, Any]) -> HealthSettings:
        d = self.table(top.get("health", {}), "health", {"initial"})
        return HealthSettings(initial=self.choice(d, "initial", "health", "up", ("up", "unknown")))

    def tunnel_check(self, h: HealthCheck, p: str, vip: Vip, backends: tuple[Backend, ...], where: str) -> None:
        """``through_tunnel``: what the tunnel probe can do (maglev/health/tunnel.py)."""
        if not h.through_tunnel:
            return
        if h.type != "tcp":
            self.err(f"{p}.through_tunnel", f"needs type = 'tcp' (a TCP handshake with the VIP through the "
                                            f"tunnel), not {h.type!r}")
        if vip.protocol != "tcp":
            self.err(f"{p}.through_tunnel", f"needs a TCP VIP ({where} is {vip.protocol})")
        if vip.encap not in ("gre", "ipip", "vxlan"):
            self.err(f"{p}.through_tunnel", f"needs encap gre, ipip or vxlan ({where} uses {vip.encap!r})")
        if vip.address and _ip_address(vip.address).version != 4:
            self.err(f"{p}.through_tunnel", f"supports IPv4 VIPs only ({where} is {vip.address})")
        for b in backends:
            if b.address and b.ip.version != 4:
                self.err(f"{p}.through_tunnel", f"supports IPv4 backends only ({b.address} of {where})")
                break

    def pool_refs(self, d: dict[str, Any], p: str) -> tuple[PoolRef, ...]:
        """``pool = [{name, weight}]`` of a VIP or a pool (checked against [[pool]] later)."""
        out = []
        seen: dict[str, int] = {}
        for j, raw in enumerate(self.array(d.get("pool", []), f"{p}.pool")):
            rp = f"{p}.pool[{j}]"
            rd = self.table(raw, rp, {"name", "weight"})
            if "name" not in rd:
                self.err(f"{rp}.name", "is required")
            ref = PoolRef(self.string(rd, "name", rp, ""), self.integer(rd, "weight", rp, 1, 0, MAX_WEIGHT))
            if ref.name in seen:
                self.err(f"{rp}.name", f"pool {show(ref.name)} is listed twice (also pool[{seen[ref.name]}])")
                continue
            seen[ref.name] = j
            out.append(ref)
        return tuple(out)

    def hashing(self, d: dict[str, Any], vip: Vip, p: str) -> None:
        """Combinations of the per-VIP hashing options that cannot work."""
        if vip.udp_ignore_src_port and vip.protocol != "udp":
            self.err(f"{p}.udp_ignore_src_port", f"applies to UDP VIPs only (protocol is {vip.protocol!r})")
        if vip.udp_ignore_src_port and vip.hash != "5tuple":
            self.err(f"{p}.udp_ignore_src_port", f"hash {vip.hash!r} leaves the source port out already")
        if not vip.conntrack and vip.protocol != "udp":
            self.err(f"{p}.conntrack", "false is for stateless UDP services: a TCP connection "
                     "would move whenever the VIP's table changes")
        if vip.hash == "dst_port" and vip.allow_fragments:
            self.err(f"{p}.hash", "'dst_port' needs allow_fragments = false (fragments are hashed on "
                     "source, destination and protocol, so they would reach another backend)")

    def quic(self, data: Any, p: str) -> Quic:
        d = self.table(data, p, {"server_id_offset", "server_id_length", "cid_length"})
        if "server_id_length" not in d:
            self.err(f"{p}.server_id_length", "is required")
        q = Quic(
            server_id_offset=self.integer(d, "server_id_offset", p, 1, 0, 19),
            server_id_length=self.integer(d, "server_id_length", p, 1, 1, 8),
            cid_length=self.integer(d, "cid_length", p, 8, 1, 20),
        )
        if q.server_id_offset + q.server_id_length > q.cid_length:
            self.err(f"{p}.server_id_length", f"a {q.server_id_length}-byte server ID at offset "
                     f"{q.server_id_offset} does not fit a {q.cid_length}-byte connection ID (cid_length)")
        return q

    def quic_ids(self, vip: Vip, p: str) -> None:
        """QUIC server IDs: on a UDP VIP with ``quic`` only, the configured length, distinct."""
        if vip.quic.enabled and vip.protocol != "udp":
            self.err(f"{p}.quic", f"applies to UDP VIPs only (protocol is {vip.protocol!r})")
        seen: dict[int, int] = {}
        n = vip.quic.server_id_length
        for j, b in enumerate(vip.backends):
            sid = b.quic_server_id
            if not sid:
                continue
            bp = f"{p}.backend[{j}].quic_server_id"
            if not vip.quic.enabled:
                self.err(bp, "the VIP has no quic table (set quic.server_id_length)")
                continue
            if len(sid) != 2 * n:
                self.err(bp, f"{show(sid)} must be {2 * n} hex digits (quic.server_id_length = {n})")
                continue
            value = int(sid, 16)
            if value in seen:
                self.err(bp, f"{show(sid)} is also backend[{seen[value]}].quic_server_id: server IDs are unique per VIP")
            seen.setdefault(value, j)

    def backend(self, data: Any, p: str, encap: str) -> Backend:
        # A control-plane change revalidates the whole config (one validator for file and
        # socket); a backend table equal to one accepted before -- same keys, values *and
        # value types*, so True is not taken for 1 -- gives the same Backend, which makes
        # validating 1000 backends ~3x faster.  Only successes are remembered; bounded.
        key = _backend_memo_key(data, encap, self.allow_loopback)
        if key is not None and (hit := _BACKEND_MEMO.get(key)) is not None:
            return hit
        n = self.n_problems
        b = self._backend(data, p, encap)
        if key is not None and self.n_problems == n:
            if len(_BACKEND_MEMO) >= _BACKEND_MEMO_MAX:
                _BACKEND_MEMO.clear()
            _BACKEND_MEMO[key] = b
        return b

    def _backend(self, data: Any, p: str, encap: str) -> Backend:
        d = self.table(data, p, {"address", "weight", "name", "mac", "quic_server_id"})
        mac = self.string(d, "mac", p, "")
        if mac and not _MAC_RE.fullmatch(mac):
            self.err(f"{p}.mac", f"{show(mac)} is not a MAC address (aa:bb:cc:dd:ee:ff)")
            mac = ""
        elif mac and int(mac[:2], 16) & 1:
            self.err(f"{p}.mac", f"{show(mac)} is a group (multicast) MAC address, not a host's")
            mac = ""
        elif mac and not int(mac.replace(":", ""), 16):
            self.err(f"{p}.mac", f"{show(mac)} is the all-zero MAC address, not a host's")
            mac = ""
        name = self.string(d, "name", p, "")
        if len(name.encode()) > 255:
            self.err(f"{p}.name", "is longer than 255 bytes")
        sid = self.string(d, "quic_server_id", p, "")
        if sid and not re.fullmatch(r"[0-9a-fA-F]{2,16}", sid):
            self.err(f"{p}.quic_server_id", f"{show(sid)} is not a server ID of 1-8 bytes in hex (e.g. '0a01')")
            sid = ""
        return Backend(
            address=self.ip(d, "address", p, True, 0, "backend"),
            weight=self.integer(d, "weight", p, 1, 0, MAX_WEIGHT),
            name=name,
            mac=mac.lower(),
            quic_server_id=sid.lower(),
        )

    def asn(self, d: dict[str, Any], key: str, path: str, default: int, lo: int) -> int:
        asn = self.integer(d, key, path, default, lo, 4294967295)
        if asn == AS_TRANS:
            self.err(f"{path}.{key}", f"{AS_TRANS} is AS_TRANS (RFC 6793), a placeholder, not an AS number")
            return default
        return asn

    def bgp(self, data: Any, p: str = "bgp") -> Bgp:
        d = self.table(
            data,
            p,
            {"local_asn", "router_id", "next_hop_ipv4", "next_hop_ipv6", "listen_port", "peer",
             "listen_address", "connect_retry_time", "graceful_restart_time", "bfd_interval_ms", "bfd_multiplier",
             "bfd_port"},
        )
        peers = []
        for i, raw in enumerate(self.array(d.get("peer", []), f"{p}.peer")):
            pp = f"{p}.peer[{i}]"
            pd = self.table(raw, pp, {"address", "asn", "port", "hold_time", "passive", "local_address", "bfd"})
            hold = self.integer(pd, "hold_time", pp, 90, 0, 65535)
            if hold in (1, 2):
                self.err(f"{pp}.hold_time", "must be 0 or at least 3 seconds (RFC 4271 4.2)")
            peers.append(
                BgpPeer(
                    address=self.ip(pd, "address", pp, True, 0, "peer"),
                    asn=self.asn(pd, "asn", pp, 0, 1),
                    port=self.integer(pd, "port", pp, 179, 1, 65535),
                    hold_time=hold,
                    passive=self.boolean(pd, "passive", pp, False),
                    local_address=self.ip(pd, "local_address", pp, False, 0, "local"),
                    bfd=self.boolean(pd, "bfd", pp, False),
                )
            )
            peer = peers[-1]
            if peer.local_address and peer.address and (":" in peer.local_address) != (":" in peer.address):
                self.err(f"{pp}.local_address", "must be of the same address family as the peer address")
            # Incoming connections are matched to a peer by source address.
            earlier = [j for j, q in enumerate(peers[:-1]) if q.address and q.address == peer.address]
            if earlier:
                self.err(f"{pp}.address", f"duplicate peer {peer.address} (also peer[{earlier[0]}])")
        bgp = Bgp(
            local_asn=self.asn(d, "local_asn", p, 0, 0),
            router_id=self.ip(d, "router_id", p, False, 4, "router-id"),
            next_hop_ipv4=self.ip(d, "next_hop_ipv4", p, False, 4, "next-hop"),
            next_hop_ipv6=self.ip(d, "next_hop_ipv6", p, False, 6, "next-hop"),
            listen_port=self.integer(d, "listen_port", p, 179, 0, 65535),
            peers=tuple(peers),
            listen_address=self.ip(d, "listen_address", p, False, 0, "listen"),
            connect_retry_time=self.integer(d, "connect_retry_time", p, 30, 1, 65535),
            graceful_restart_time=self.integer(d, "graceful_restart_time", p, 0, 0, 4095),  # 12 bits on the wire
            bfd_interval_ms=self.integer(d, "bfd_interval_ms", p, 300, 10, 60000),
            bfd_multiplier=self.integer(d, "bfd_multiplier", p, 3, 1, 255),
            bfd_port=self.integer(d, "bfd_port", p, 3784, 1, 65535),
        )
        if bgp.listen_port == 0:
            for i, peer in enumerate(bgp.peers):
                if peer.passive:
                    self.err(f"{p}.peer[{i}].passive", "a passive peer needs bgp.listen_port (it is 0)")
        if bgp.peers and not bgp.local_asn:
            self.err(f"{p}.local_asn", "is required when peers are configured")
        if bgp.peers and not bgp.router_id:
            self.err(f"{p}.router_id", "is required when peers are configured")
        return bgp

    def control(self, data: Any, p: str = "control") -> Control:
        d = self.table(data, p, {"endpoint", "events_endpoint", "server_secret_key_file", "authorized_keys_file"})
        c = Control(
            endpoint=self.string(d, "endpoint", p, ""),
            events_endpoint=self.string(d, "events_endpoint", p, ""),
            server_secret_key_file=self.string(d, "server_secret_key_file", p, ""),
            authorized_keys_file=self.string(d, "authorized_keys_file", p, ""),
        )
        for key in ("endpoint", "events_endpoint"):
            ep = getattr(c, key)
            if ep and not ep.startswith(("ipc://", "tcp://")):
                self.err(f"{p}.{key}", f"{show(ep)} must start with ipc:// or tcp://")
            elif ep.startswith("ipc://") and (why := ipc_path_problem(ep[6:])):
                self.err(f"{p}.{key}", f"{show(ep)}: {why}")
            elif ep.startswith("tcp://") and not _TCP_ENDPOINT_RE.fullmatch(ep[6:]):
                self.err(f"{p}.{key}", f"{show(ep)} must be tcp://HOST:PORT (port 0-65535 or *)")
            elif ep.startswith("tcp://") and not (c.server_secret_key_file and c.authorized_keys_file):
                self.err(
                    f"{p}.{key}",
                    "a tcp:// endpoint needs CURVE keys: set server_secret_key_file and authorized_keys_file",
                )
        return c

    def tracing(self, data: Any) -> Tracing:
        p = "tracing"
        d = self.table(data, p, {"otlp_endpoint", "packet_sample_rate"})
        t = Tracing(
            otlp_endpoint=self.string(d, "otlp_endpoint", p, ""),
            packet_sample_rate=self.integer(d, "packet_sample_rate", p, 0, 0, 1 << 30),
        )
        if t.otlp_endpoint and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", t.otlp_endpoint):
            self.err(f"{p}.otlp_endpoint", f"{show(t.otlp_endpoint)} must be an http:// or https:// URL")
        return t


# --------------------------------------------------------------------------- writing


def _plain_for_toml(v: Any) -> Any:
    """Lists for tuples, and no empty arrays: an absent key reads back as the same default
    (``pool``, a VIP without backends), and the file stays free of ``x = []`` noise."""
    if isinstance(v, dict):
        return {k: _plain_for_toml(x) for k, x in v.items() if not (isinstance(x, list | tuple) and not x)}
    if isinstance(v, list | tuple):
        return [_plain_for_toml(x) for x in v]
    return v


def dump_toml(config: Config) -> str:
    """TOML text that ``loads`` turns back into an equal ``Config`` (written by ``tomli-w``:
    strings escaped, arrays of tables, all as the TOML 1.0 specification says)."""
    import tomli_w

    return "# written by maglev; the last accepted configuration\n" + tomli_w.dumps(_plain_for_toml(config.to_dict()))


Validator = Callable[[Config], list[str]]
