"""NICs: where packets come from and where they go.

One small interface, several drivers, chosen on the command line (``--nic``, ``--out``):

==========================  ==========================  ================================
``--nic``                   receive side (steering)     default transmit side (muxer)
==========================  ==========================  ================================
``gen:flows=N,...``         in-memory generator (C)     ``null`` (count and discard)
``pcap:IN.pcap``            capture replay              ``null`` unless ``--out FILE``
``afpacket:IFACE[,...]``    TPACKET_V2 ring             the same interface (TX ring)
``afxdp:IFACE[,...]``       AF_XDP sockets + XDP prog   the same sockets' TX rings
==========================  ==========================  ================================

``--out null`` or ``--out FILE.pcap`` overrides the transmit side.

``afpacket`` options: ``ring=v2|v3`` (receive ring flavour, default v2), ``queues=N``
(N receive sockets in one PACKET_FANOUT group, default 1), ``fanout=ID`` (the group id,
default derived from the process id; give the same id to share an interface with another
program's sockets).  ``afxdp`` options: ``queues=N`` (sockets on queues 0..N-1, default all),
``mode=auto|copy|zerocopy``, ``busy_poll=US`` (see maglev/nic/afxdp.py).

The pipeline opens the receive side in the steering process and the transmit side in the
muxer process (two different objects, two processes).  A driver object offers the verbs
it supports (the AF_PACKET driver has both, so its shape is the interface):

* ``rx_burst(pool, descs, n) -> k`` fills frames ``descs[0..k)`` (cffi ``uint8_t *`` pool,
  cffi ``uint64_t *`` descriptors whose low 32 bits are frame indices) with received
  packets, metadata included (``len``, ``data_off = MG_FRAME_HEADROOM``, ``rx_ts_ns``,
  ``seq``);
* ``tx_burst(pool, descs, n) -> k`` transmits frames; the caller owns every frame again
  when it returns, sent or not;
* ``wait(timeout_s) -> bool`` sleeps until receive may have packets (never spins);
* ``eof`` (receive side) is True once a finite source is exhausted;
* ``stats() -> dict`` and ``close()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from maglev.errors import MaglevError

__all__ = [
    "NicSpec", "NicSpecError", "RxNic", "TxNic", "check_interface", "open_rx", "open_tx", "parse_nic",
    "parse_out",
]


class NicSpecError(MaglevError, ValueError):
    """A ``--nic`` / ``--out`` value that cannot be used."""


class RxNic(Protocol):
    kind: str
    eof: bool

    def rx_burst(self, pool: Any, descs: Any, n: int) -> int: ...
    def wait(self, timeout_s: float) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class TxNic(Protocol):
    kind: str

    def tx_burst(self, pool: Any, descs: Any, n: int) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class NicSpec:
    kind: str  # gen | pcap | afpacket | null
    arg: str = ""  # path or interface name
    options: tuple[tuple[str, str], ...] = ()

    def option_dict(self) -> dict[str, str]:
        return dict(self.options)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        if self.kind == "gen":
            return "gen:" + opts
        text = f"{self.kind}:{self.arg}" if self.arg else self.kind
        return f"{text},{opts}" if opts else text


# Options each interface driver takes, with a checker that returns an error or "".
def _int_in(lo: int, hi: int):
    def chk(v: str) -> str:
        return "" if v.isdigit() and lo <= int(v) <= hi else f"must be an integer {lo}..{hi}"

    return chk


def _one_of(*names: str):
    def chk(v: str) -> str:
        return "" if v in names else f"must be one of {', '.join(names)}"

    return chk


IFACE_OPTIONS: dict[str, dict[str, Any]] = {
    "afpacket": {"ring": _one_of("v2", "v3"), "queues": _int_in(1, 64), "fanout": _int_in(0, 65535)},
    "afxdp": {"queues": _int_in(1, 64), "mode": _one_of("auto", "copy", "zerocopy"),
              "busy_poll": _int_in(0, 1000000)},
}


def _iface_spec(text: str, kind: str, rest: str) -> NicSpec:
    iface, *items = rest.split(",")
    if not iface or len(iface) > 15 or "/" in iface or any(c.isspace() for c in iface):
        raise NicSpecError(f"--nic {text}: {iface!r} is not an interface name")
    allowed = IFACE_OPTIONS[kind]
    opts = []
    for item in items:
        k, eq, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or not k:
            raise NicSpecError(f"--nic {text}: {item!r} is not key=value")
        if k not in allowed:
            raise NicSpecError(f"--nic {text}: unknown option {k!r} for {kind} (known: {', '.join(allowed)})")
        if err := allowed[k](v):
            raise NicSpecError(f"--nic {text}: {k} {err}")
        opts.append((k, v))
    return NicSpec(kind, iface, tuple(opts))


def parse_nic(text: str) -> NicSpec:
    """``gen[:k=v,...]``, ``pcap:PATH``, ``afpacket:IFACE[,k=v,...]``."""
    kind, sep, rest = text.partition(":")
    if kind == "gen":
        opts = []
        for item in filter(None, rest.split(",")):
            k, eq, v = item.partition("=")
            if not eq or not k:
                raise NicSpecError(f"--nic {text}: {item!r} is not key=value")
            opts.append((k.strip(), v.strip()))
        from maglev.nic.gen import validate_options

        validate_options(dict(opts), where=f"--nic {text}")
        return NicSpec("gen", "", tuple(opts))
    if kind in ("pcap", "afpacket", "afxdp"):
        if not sep or not rest:
            what = "a capture file" if kind == "pcap" else "an interface name"
            raise NicSpecError(f"--nic {text}: {kind} needs {what}, as {kind}:NAME")
        if kind in ("afpacket", "afxdp"):
            return _iface_spec(text, kind, rest)
        return NicSpec(kind, rest)
    raise NicSpecError(f"--nic {text}: unknown NIC {kind!r} (use gen:..., pcap:FILE, afpacket:IFACE or afxdp:IFACE)")


def parse_out(text: str | None, nic: NicSpec) -> NicSpec:
    """The transmit side: ``null``, a pcap file path, or (default) what ``nic`` implies."""
    if text is None or text == "":
        # afxdp transmits through its sockets' TX rings (AfXdpTx, in the muxer).
        return NicSpec(nic.kind, nic.arg) if nic.kind in ("afpacket", "afxdp") else NicSpec("null")
    if text == "null":
        return NicSpec("null")
    if text.startswith("afpacket:"):
        return NicSpec("afpacket", parse_nic(text).arg)
    return NicSpec("pcap", text.removeprefix("pcap:"))


def check_interface(spec: NicSpec) -> None:
    """Before any process starts (``maglev run``): the interface of an ``afpacket`` or
    ``afxdp`` NIC exists, and for afxdp, AF_XDP can be set up here (else one sentence
    saying why and which --nic to use instead)."""
    import socket

    try:
        socket.if_nametoindex(spec.arg)
    except OSError:
        raise NicSpecError(f"--nic {spec}: no network interface named {spec.arg!r} here") from None
    if spec.kind == "afxdp":
        from maglev.nic.afxdp import why_no_afxdp

        if reason := why_no_afxdp():
            raise NicSpecError(f"--nic {spec}: {reason}".replace("IFACE", spec.arg))


def open_rx(spec: NicSpec, *, vips: Any = None, seed: int = 1) -> RxNic:
    """Open the receive side in the calling (steering) process."""
    if spec.kind == "gen":
        from maglev.nic.gen import GenNic

        return GenNic.from_options(spec.option_dict(), vips or (), seed=seed)
    if spec.kind == "pcap":
        from maglev.nic.pcapnic import PcapRx

        return PcapRx(spec.arg)
    if spec.kind == "afpacket":
        from maglev.nic.afpacket import open_afpacket_rx

        return open_afpacket_rx(spec.arg, spec.option_dict())  # type: ignore[return-value]
    if spec.kind == "afxdp":
        from maglev.nic.afxdp import AfXdpNic

        o = spec.option_dict()
        return AfXdpNic(spec.arg, vips=vips or (), queues=int(o.get("queues", 0)),  # type: ignore[return-value]
                        mode=o.get("mode", "auto"), busy_poll=int(o.get("busy_poll", 0)))
    raise NicSpecError(f"{spec}: cannot receive from this NIC")


def open_tx(spec: NicSpec, *, run_dir: str = "", resume: bool = False) -> TxNic:
    """Open the transmit side in the calling (muxer) process (``run_dir``: where steering
    publishes its AF_XDP sockets for an ``afxdp`` transmit side; ``resume``: a restarted
    muxer, which continues a ``pcap`` output file instead of starting it anew)."""
    if spec.kind == "null":
        from maglev.nic.null import NullSink

        return NullSink()
    if spec.kind == "pcap":
        from maglev.nic.pcapnic import PcapTx

        return PcapTx(spec.arg, resume=resume)
    if spec.kind == "afpacket":
        from maglev.nic.afpacket import AfPacketNic

        return AfPacketNic(spec.arg)  # type: ignore[return-value]
    if spec.kind == "afxdp":
        from maglev.nic.afxdp import AfXdpTx, read_handoff

        iface = spec.arg
        return AfXdpTx(iface, lambda: read_handoff(run_dir, iface) if run_dir else None)  # type: ignore[return-value]
    raise NicSpecError(f"{spec}: cannot transmit to this NIC")
