"""A small loader for maglev's own XDP program, on the raw bpf(2) syscall.

Why not libbpf/libxdp (Debian has libbpf 1.1 and libxdp 1.3): the project's extension
must build and ``pip install .`` must succeed on machines without them, and the program
is one function with three maps.  What a general loader does that this one needs is
short: read the ELF object clang built (maglev/data/mg_xdp.bpf.o), create the maps of its
legacy ``maps`` section, patch each map's file descriptor into the ``ld_imm64``
instructions its relocations name, load the ``xdp`` section, and attach it with a
*BPF link* (``BPF_LINK_CREATE``, Linux >= 5.9).

A BPF link belongs to its file descriptor: when the process that made it exits -- stopped
or killed with SIGKILL -- the kernel detaches the program.  So a dead maglev never leaves
an XDP program on the interface, and there is never a stale one of ours to remove at the
next start.  An interface that already has an XDP program (another maglev, or one
attached with ``ip link``/``xdp-loader``) refuses the link with EBUSY, and we say so.

Everything here runs at start-up and on configuration changes, never per packet, so
ctypes is fine.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from maglev.errors import MaglevError

OBJ = Path(__file__).resolve().parent.parent / "data" / "mg_xdp.bpf.o"

_SYS_BPF = 321  # x86_64
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_MAP_GET_NEXT_KEY, BPF_PROG_LOAD = 4, 5
BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_LINK_CREATE = 13, 14, 15, 28
BPF_PROG_TYPE_XDP, BPF_XDP = 6, 37
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1 << 1, 1 << 2
BPF_PSEUDO_MAP_FD = 1
_ATTR_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class XdpError(MaglevError, OSError):
    """The XDP program could not be loaded or attached."""


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    r = _libc.syscall(_SYS_BPF, cmd, buf, _ATTR_SIZE)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


@dataclass
class _Elf:
    sections: dict[str, tuple[int, int, int, int, int]]  # name -> (type, offset, size, link, info)
    order: list[str]
    data: bytes
    symbols: list[tuple[str, int, int]] = field(default_factory=list)  # (name, shndx, value)

    def section(self, name: str) -> bytes:
        _, off, size, _, _ = self.sections[name]
        return self.data[off : off + size]


def _parse_elf(data: bytes) -> _Elf:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise XdpError(errno.ENOEXEC, "the XDP object is not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    stroff = raw[shstrndx][4]

    def name_at(base: int, off: int) -> str:
        end = data.index(b"\0", base + off)
        return data[base + off : end].decode()

    names = [name_at(stroff, r[0]) for r in raw]
    secs = {n: (r[1], r[4], r[5], r[6], r[7]) for n, r in zip(names, raw, strict=True)}
    elf = _Elf(secs, names, data)
    if ".symtab" in secs:
        _, off, size, link, _ = secs[".symtab"]
        strtab = raw[link][4]
        for i in range(size // 24):
            st_name, _info, _other, shndx, value, _sz = struct.unpack_from("<IBBHQQ", data, off + i * 24)
            elf.symbols.append((name_at(strtab, st_name), shndx, value))
    return elf


@dataclass
class XdpProgram:
    """The loaded program and its maps (file descriptors owned by this object)."""

    prog_fd: int
    maps: dict[str, int]
    link_fd: int = -1
    ifindex: int = 0
    mode: str = ""

    def close(self) -> None:
        """Detach (closing the link) and release the program and maps."""
        for fd in (self.link_fd, self.prog_fd, *self.maps.values()):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.link_fd = self.prog_fd = -1
        self.maps = {}

    # -- maps ------------------------------------------------------------------------
    def _update(self, name: str, key: bytes, value: bytes) -> None:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value, len(value))
        _bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IIQQQ", self.maps[name], 0, ctypes.addressof(k),
                                              ctypes.addressof(v), 0))

    def set_socket(self, queue: int, xsk_fd: int) -> None:
        self._update("xsks", struct.pack("<I", queue), struct.pack("<I", xsk_fd))

    def add_vip(self, address: str) -> None:
        """Redirect packets whose destination is ``address`` (IPv4 or IPv6)."""
        self._update("vip_addrs", vip_key(address), struct.pack("<I", 1))

    def remove_vip(self, address: str) -> None:
        """Stop redirecting ``address`` (absent already: nothing to do)."""
        k = ctypes.create_string_buffer(vip_key(address), 16)
        try:
            _bpf(BPF_MAP_DELETE_ELEM, struct.pack("<IIQ", self.maps["vip_addrs"], 0, ctypes.addressof(k)))
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def vips(self) -> set[str]:
        """The addresses redirected now (read back from the map)."""
        return _map_addresses(self.maps["vip_addrs"])

    def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(("redirected", "passed")):
            k = ctypes.create_string_buffer(struct.pack("<I", i), 4)
            v = ctypes.create_string_buffer(8)
            _bpf(BPF_MAP_LOOKUP_ELEM, struct.pack("<IIQQQ", self.maps["counters"], 0, ctypes.addressof(k),
                                                  ctypes.addressof(v), 0))
            out[name] = struct.unpack("<Q", v.raw)[0]
        return out

    # -- attach ----------------------------------------------------------------------
    def attach(self, ifindex: int, iface: str, mode: str = "auto") -> None:
        """Attach with a BPF link: ``mode`` native (driver), generic (skb) or auto (native,
        else generic)."""
        tries = {"native": [XDP_FLAGS_DRV_MODE], "generic": [XDP_FLAGS_SKB_MODE],
                 "auto": [XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE]}[mode]
        last: OSError | None = None
        for flags in tries:
            try:
                self.link_fd = _bpf(BPF_LINK_CREATE, struct.pack("<IIII", self.prog_fd, ifindex, BPF_XDP, flags))
                self.ifindex = ifindex
                self.mode = "native" if flags == XDP_FLAGS_DRV_MODE else "generic"
                return
            except OSError as e:
                last = e
                if e.errno == errno.EBUSY:
                    break
        assert last is not None
        if last.errno == errno.EBUSY:
            raise XdpError(errno.EBUSY, f"afxdp: {iface} already has an XDP program (another maglev, or one "
                           f"attached with `ip link`/xdp-loader: `ip link set dev {iface} xdp off` removes the "
                           "latter); or use --nic afpacket:" + iface)
        raise XdpError(last.errno, f"afxdp: cannot attach the XDP program to {iface} ({last.strerror}); "
                       f"use --nic afpacket:{iface}")


def vip_key(address: str) -> bytes:
    """The map key of an address: 16 bytes, IPv4 as ::ffff:a.b.c.d."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address)
    return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(address)


def _map_addresses(map_fd: int) -> set[str]:
    out: set[str] = set()
    key = ctypes.create_string_buffer(16)
    nxt = ctypes.create_string_buffer(16)
    first = True
    for _ in range(1 << 16):  # bounded: the map holds at most 1024
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, struct.pack("<IIQQ", map_fd, 0, 0 if first else ctypes.addressof(key),
                                                   ctypes.addressof(nxt)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                break
            raise
        first = False
        raw = nxt.raw
        out.add(socket.inet_ntop(socket.AF_INET, raw[12:]) if raw[:12] == b"\0" * 10 + b"\xff\xff"
                else socket.inet_ntop(socket.AF_INET6, raw))
        ctypes.memmove(key, nxt, 16)
    return out


def attached_vips(prog_id: int) -> set[str]:
    """The VIP addresses the loaded program ``prog_id`` redirects (``ip -d link`` shows the
    id of an interface's XDP program): for tests and tools, from any process."""
    pfd = _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0))
    try:
        ids = (ctypes.c_uint32 * 16)()
        info = ctypes.create_string_buffer(256)
        struct.pack_into("<IQ", info, 52, 16, ctypes.addressof(ids))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", pfd, 256, ctypes.addressof(info)))
        n = struct.unpack_from("<I", info, 52)[0]
        for map_id in list(ids)[: min(n, 16)]:
            mfd = _bpf(BPF_MAP_GET_FD_BY_ID, struct.pack("<III", map_id, 0, 0))
            try:
                minfo = ctypes.create_string_buffer(128)
                _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", mfd, 128, ctypes.addressof(minfo)))
                if minfo.raw[24:40].rstrip(b"\0") == b"vip_addrs":
                    return _map_addresses(mfd)
            finally:
                os.close(mfd)
    finally:
        os.close(pfd)
    raise XdpError(errno.ENOENT, f"XDP program {prog_id} has no vip_addrs map (not maglev's)")


def load(obj: Path = OBJ) -> XdpProgram:
    """Create the maps and load the program of ``obj`` (not attached yet)."""
    try:
        data = obj.read_bytes()
    except OSError:
        raise XdpError(errno.ENOENT, f"afxdp: the XDP program {obj} was not built (the build needs clang with "
                       "the BPF target: apt-get install clang, then rebuild); use --nic afpacket:IFACE") from None
    elf = _parse_elf(data)
    for need in ("xdp", "maps", "license", ".symtab"):
        if need not in elf.sections:
            raise XdpError(errno.ENOEXEC, f"afxdp: {obj} has no {need} section")
    maps_idx = elf.order.index("maps")
    maps_data = elf.section("maps")
    maps: dict[str, int] = {}
    prog = XdpProgram(-1, maps)
    try:
        by_value = {}
        for name, shndx, value in elf.symbols:
            if shndx == maps_idx and name:
                mtype, ksz, vsz, nmax, mflags = struct.unpack_from("<IIIII", maps_data, value)
                name16 = name.encode()[:15]
                maps[name] = _bpf(BPF_MAP_CREATE, struct.pack("<IIIIIII16s", mtype, ksz, vsz, nmax, mflags, 0, 0,
                                                             name16))
                by_value[value] = name
        insns = bytearray(elf.section("xdp"))
        if ".relxdp" in elf.sections:
            rel = elf.section(".relxdp")
            for i in range(len(rel) // 16):
                r_offset, r_info = struct.unpack_from("<QQ", rel, i * 16)
                sym = elf.symbols[r_info >> 32]
                if sym[1] != maps_idx:
                    raise XdpError(errno.ENOEXEC, f"afxdp: unsupported relocation to {sym[0]!r}")
                fd = maps[by_value[sym[2]]]
                regs = insns[r_offset + 1]
                insns[r_offset + 1] = (regs & 0x0F) | (BPF_PSEUDO_MAP_FD << 4)
                struct.pack_into("<i", insns, r_offset + 4, fd)
        lic = ctypes.create_string_buffer(elf.section("license").rstrip(b"\0") + b"\0")
        code = ctypes.create_string_buffer(bytes(insns), len(insns))
        log = ctypes.create_string_buffer(1 << 20)

        def attr(level: int) -> bytes:
            return struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_XDP, len(insns) // 8, ctypes.addressof(code),
                               ctypes.addressof(lic), level, len(log) if level else 0,
                               ctypes.addressof(log) if level else 0, 0, 0, b"maglev_xdp", 0, BPF_XDP)

        try:
            prog.prog_fd = _bpf(BPF_PROG_LOAD, attr(0))
        except OSError as e0:
            if e0.errno in (errno.EPERM, errno.EACCES):
                raise
            try:  # again with the verifier's log, to say why
                prog.prog_fd = _bpf(BPF_PROG_LOAD, attr(1))
                return prog
            except OSError as e:
                text = log.value.decode(errors="replace").strip().splitlines()[-3:]
                raise XdpError(e.errno, f"afxdp: the kernel refused the XDP program ({e.strerror}): "
                               f"{' / '.join(text)}") from None
        return prog
    except OSError as e:
        prog.close()
        if isinstance(e, XdpError):
            raise
        if e.errno in (errno.EPERM, errno.EACCES):
            raise XdpError(e.errno, "afxdp: loading an XDP program needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN); "
                           "use --nic afpacket:IFACE with CAP_NET_RAW only") from None
        raise XdpError(e.errno, f"afxdp: bpf(2) failed: {e.strerror}") from None
