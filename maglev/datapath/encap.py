"""Encapsulation toward backends: the public API and the thin cffi wrapper of ``mg_encap``.

The worker's burst kernel calls ``mg_encap()`` from C, once per packet; Python uses this
module for tools, tests and ``--engine python`` runs.  ``encap(..., engine="c")`` runs the
C kernel on a one-frame scratch pool laid out like the real frame pool
(``include/mg_frame.h``), ``engine="python"`` runs :mod:`maglev.datapath.ref_encap`; both
return the same bytes or raise the same :class:`~maglev.errors.NativeError`.

:func:`params_for` turns configuration (``Instance``, ``Vip``, ``Backend``) into the
per-backend :class:`EncapParams`.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import TYPE_CHECKING, Any

from maglev.datapath import ref_encap
from maglev.datapath.ref_encap import EncapParams
from maglev.errors import ConfigError, NativeError
from maglev.native import ENGINES, check, ffi, lib

if TYPE_CHECKING:
    from maglev.config import Backend, Instance, Vip

__all__ = ["ENGINES", "EncapParams", "ScratchPool", "encap", "overhead", "params_for", "TYPES"]

TYPES = dict(ref_encap.TYPES)


class ScratchPool:
    """A few frames in the real pool layout (metadata, headroom, packet), for running the
    frame kernels from Python.  One allocation, reused."""

    def __init__(self, frames: int = 1):
        self.frames = frames
        self.buf = ffi.new("uint8_t[]", frames * lib.MG_FRAME_SIZE)

    def meta(self, idx: int) -> Any:
        """The frame's ``struct mg_frame_meta *``."""
        return ffi.cast("struct mg_frame_meta *", self.buf + idx * lib.MG_FRAME_SIZE)

    def put(self, idx: int, packet: bytes, headroom: int = lib.MG_FRAME_HEADROOM) -> None:
        if not 0 <= idx < self.frames:
            raise IndexError(f"frame {idx} is not in a pool of {self.frames}")
        room = lib.MG_FRAME_SIZE - lib.MG_FRAME_META_SIZE
        if headroom < 0 or headroom + len(packet) > room:
            raise ValueError(f"{len(packet)} bytes after {headroom} of headroom do not fit a frame")
        base = idx * lib.MG_FRAME_SIZE
        ffi.memmove(self.buf + base, bytes(lib.MG_FRAME_SIZE), lib.MG_FRAME_SIZE)
        m = self.meta(idx)
        m.data_off = headroom
        m.len = len(packet)
        m.wire_len = len(packet)
        m.backend_index = -1
        ffi.memmove(self.buf + base + lib.MG_FRAME_META_SIZE + headroom, packet, len(packet))

    def get(self, idx: int) -> bytes:
        m = self.meta(idx)
        start = idx * lib.MG_FRAME_SIZE + lib.MG_FRAME_META_SIZE + m.data_off
        return bytes(ffi.buffer(self.buf + start, m.len))


_scratch: ScratchPool | None = None


def scratch_pool() -> ScratchPool:
    """One frame for the Python front-ends of the frame kernels (encap, icmp): each call
    puts its packet, runs the kernel and reads the frame back before returning."""
    global _scratch
    if _scratch is None:
        _scratch = ScratchPool(1)
    return _scratch


def c_params(p: EncapParams) -> Any:
    """A ``struct mg_encap_params *`` (cffi-owned) for ``p``."""
    c = ffi.new("struct mg_encap_params *")
    c.type = p.type
    c.outer_family = p.outer_family
    c.vxlan_port = p.vxlan_port
    c.vni = p.vni & 0xFFFFFFFF
    for name in ("eth_src", "eth_dst", "inner_eth_src", "inner_eth_dst", "src", "dst"):
        v = getattr(p, name)
        ffi.memmove(getattr(c, name), v, len(v))
    return c


def overhead(type_: int | str, outer_family: int) -> int:
    """Bytes the encapsulation adds to the L3 packet (to compare with the MTU)."""
    t = TYPES[type_] if isinstance(type_, str) else type_
    return check(lib.mg_encap_overhead(t, outer_family), "encap overhead")


def encap(packet: bytes, l3_off: int, inner_family: int, flow_hash: int, params: EncapParams,
          headroom: int = lib.MG_FRAME_HEADROOM, engine: str = "c") -> bytes:
    """Encapsulate one Ethernet frame (L3 header at ``l3_off``) toward ``params.dst``."""
    if engine == "python":
        return ref_encap.encap(packet, l3_off, inner_family, flow_hash, params, headroom)
    if engine != "c":
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    if not (0 <= l3_off <= 0xFFFFFFFF and 0 <= inner_family <= 255):
        raise NativeError(errno.EINVAL, "encap: l3_off or family out of range")
    pool = scratch_pool()
    pool.put(0, packet, headroom)
    check(lib.mg_encap(pool.buf, 0, l3_off, inner_family, flow_hash & 0xFFFFFFFF, c_params(params)),
          "encap")
    return pool.get(0)


def _mac(s: str, what: str) -> bytes:
    try:
        b = bytes(int(x, 16) for x in s.split(":"))
    except ValueError:
        b = b""
    if len(b) != 6:
        raise ConfigError([f"{what}: {s!r} is not a MAC address"])
    return b


def params_for(instance: Instance, vip: Vip, backend: Backend, eth_src: str, eth_dst: str,
               inner_eth_src: str = "02:00:00:00:00:00") -> EncapParams:
    """Encapsulation parameters for sending ``vip``'s packets to ``backend`` (config
    objects from :mod:`maglev.config`).  ``eth_src``/``eth_dst``: our interface's MAC and
    the next hop's.  For ``l2`` the destination is the backend's MAC; for ``vxlan`` the
    inner destination is the backend's MAC (its vxlan device), falling back to the next
    hop's when the backend has none."""
    ip = ipaddress.ip_address(backend.address)
    t = TYPES[vip.encap]
    if t == ref_encap.L2:
        if not backend.mac:
            raise ConfigError([f"backend {backend.address}: encap 'l2' needs the backend's mac"])
        return EncapParams(type=t, outer_family=ip.version, eth_src=_mac(eth_src, "eth_src"),
                           eth_dst=_mac(backend.mac, "backend.mac"))
    src = instance.source_ipv4 if ip.version == 4 else instance.source_ipv6
    if not src:
        raise ConfigError([f"instance.source_ipv{ip.version}: needed to encapsulate to {ip}"])
    inner_dst = backend.mac or eth_dst
    return EncapParams(
        type=t,
        outer_family=ip.version,
        src=ipaddress.ip_address(src).packed,
        dst=ip.packed,
        eth_src=_mac(eth_src, "eth_src"),
        eth_dst=_mac(eth_dst, "eth_dst"),
        inner_eth_src=_mac(inner_eth_src, "inner_eth_src"),
        inner_eth_dst=_mac(inner_dst, "inner_eth_dst"),
        vni=vip.vxlan_vni,
        vxlan_port=vip.vxlan_port,
    )
