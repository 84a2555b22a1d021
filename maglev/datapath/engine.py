"""What both data-path engines share: the output record, drop-reason names and the
frame-pool bookkeeping rules.

A :class:`Packet` goes in (bytes plus the caller's sequence number); an :class:`Output`
comes out for every packet, now or -- for a fragment held until its first fragment comes
-- in a later ``process``/``flush`` call.  ``Output.seq`` ties it back to the input.
Packets larger than a frame never reach a kernel: the engine front-end answers them with
a ``frame_overflow`` drop itself, the same way for both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from maglev.native import ffi, lib

DROP_NAMES: tuple[str, ...] = tuple(
    ffi.string(lib.mg_drop_name(i)).decode() for i in range(lib.MG_DROP_COUNT)
)
DROP_CODES: dict[str, int] = {n: i for i, n in enumerate(DROP_NAMES)}
VERDICT_FORWARD = lib.MG_VERDICT_FORWARD
VERDICT_ICMP = lib.MG_VERDICT_ICMP
VERDICT_HELD = lib.MG_VERDICT_HELD
VERDICT_REDIRECT = lib.MG_VERDICT_REDIRECT  # a fragment sent to its owner instance (mg_dp.h)
FRAME_HEADROOM = lib.MG_FRAME_HEADROOM  # mg_consts.h: the one definition
FRAME_DATA_MAX = lib.MG_FRAME_SIZE - lib.MG_FRAME_META_SIZE - FRAME_HEADROOM
BURST_MAX = lib.MG_BURST_MAX
DRAIN_MAX = lib.MG_DP_DRAIN_MAX


def verdict_name(verdict: int) -> str:
    if verdict == VERDICT_FORWARD:
        return "forward"
    if verdict == VERDICT_ICMP:
        return "icmp"
    if verdict == VERDICT_HELD:
        return "held"
    if verdict == VERDICT_REDIRECT:
        return "redirected"
    return DROP_NAMES[verdict] if 0 <= verdict < len(DROP_NAMES) else f"verdict_{verdict}"


@dataclass(frozen=True)
class Packet:
    seq: int
    data: bytes
    wire_len: int = 0  # original length on the wire (0 = len(data))


@dataclass(frozen=True)
class Output:
    """One frame leaving the data path.  ``action`` is "tx" (``data`` = the bytes on the
    wire: encapsulated packet or generated ICMP error) or "drop" (``data`` empty)."""

    seq: int
    action: str
    verdict: int
    data: bytes
    vip_index: int
    backend_index: int

    @property
    def reason(self) -> str:
        return verdict_name(self.verdict)


def in_bursts(packets: Iterable[Packet], burst: Callable[[list[Packet]], list[Output]],
              overflow: Callable[[Packet], None]) -> list[Output]:
    """What both engines' ``process`` do around their kernel: a packet larger than a frame
    never reaches it -- it is answered with a ``frame_overflow`` drop (``overflow(p)`` counts
    it) -- and the others go to ``burst`` in input order, at most BURST_MAX at a time."""
    out: list[Output] = []
    batch: list[Packet] = []
    for p in packets:
        if len(p.data) > FRAME_DATA_MAX:
            overflow(p)
            out.append(Output(p.seq, "drop", DROP_CODES["frame_overflow"], b"", 0, -1))
            continue
        batch.append(p)
        if len(batch) == BURST_MAX:
            out += burst(batch)
            batch = []
    if batch:
        out += burst(batch)
    return out


def empty_stats() -> dict:
    return {
        "packets_in": 0,
        "bytes_in": 0,
        "forwarded": 0,
        "bytes_out": 0,
        "icmp_sent": 0,
        "icmp_forwarded": 0,
        "fragments": 0,
        "held": 0,
        "split_pieces": 0,
        "redirected": 0,
        "redirect_in": 0,
        "quic_cid_routed": 0,
        "quic_hashed": 0,
        "cluster_in": 0,  # VIP matching: GRE from peer forwarders, packets to peer addresses,
        "cluster_matched": 0,  # and packets sent to the backup cluster (mg_dp.c)
        "backup_out": 0,
        "drops": {},
        "conntrack": {},
        "vips": {},
        "backends": {},
    }
