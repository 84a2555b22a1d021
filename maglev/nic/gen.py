"""The generator NIC (``--nic gen:flows=N,syn=0.1,size=64,ipv6=0.2,seconds=S``).

Packets are synthesised in C (``mg_gen.c``: per-flow header templates built once, then a
copy, a flag patch and metadata per packet), straight into pool frames, toward the VIPs of
the configuration.  Options:

========== ========= ==========================================================
option     default   meaning
========== ========= ==========================================================
flows      10000     distinct client flows (1 .. 4194304)
syn        0.1       fraction of TCP packets that are SYNs (the rest are ACKs)
size       64        frame length in bytes without FCS (headers-only minimum)
ipv6       0.2       fraction of flows toward IPv6 VIPs (needs one in the config)
seconds    0         stop receiving after this many seconds (0 = no limit)
packets    0         stop after this many packets (0 = no limit)
seed       1         random seed: the same seed gives the same packet sequence
rate       0         packets per second, paced (0 = as fast as the pipeline takes them)
flood      0         seconds of SYN flood (flood mode, below; 0 = off)
flood_after 2x keep  seconds of keep-alives alone before the flood starts
keepalive  1         flood mode: each flow sends one ACK this often (seconds)
========== ========= ==========================================================

**Flood mode** (``flood=S`` > 0; issue 16, ``bench/bench_flood.py``): the ``flows`` clients
are *established* flows that each send one TCP ACK every ``keepalive`` seconds, in turn
and paced by the clock, for the whole run (so they are promoted to the protected segment
of the connection table by their second packet).  After ``flood_after`` seconds, for
``flood`` seconds, every other packet the pipeline takes is a SYN from a client never
seen before (198.19.128.0/17, 2^31 of them; ``rate`` then paces the flood alone), as fast
as the pipeline takes them.  Then keep-alives alone again until ``seconds``/``packets``.
Flood mode needs an IPv4 TCP VIP (it uses only those), ``ipv6=0`` and at most 32768 flows
(their clients are 198.19.0.0/17); ``syn`` does not apply.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from typing import Any

from maglev.native import check, ffi, lib

DEFAULTS = {"flows": "10000", "syn": "0.1", "size": "64", "ipv6": "0.2", "seconds": "0",
            "packets": "0", "seed": "1", "rate": "0", "flood": "0", "flood_after": "-1", "keepalive": "1"}
FLOOD_MAX_FLOWS = 32768


def _num(opts: dict[str, str], key: str, where: str, lo: float, hi: float, integer: bool) -> float:
    raw = opts.get(key, DEFAULTS[key])
    from maglev.nic import NicSpecError

    try:
        v = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise NicSpecError(f"{where}: {key}={raw!r} is not {kind}") from None
    if not lo <= v <= hi:
        raise NicSpecError(f"{where}: {key}={raw} is out of range {lo:g}..{hi:g}")
    return v


def validate_options(opts: dict[str, str], where: str = "gen") -> dict[str, float]:
    """Check every option (unknown keys are errors) and return them as numbers."""
    from maglev.nic import NicSpecError

    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise NicSpecError(f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    o = {
        "flows": _num(opts, "flows", where, 1, int(lib.MG_GEN_MAX_FLOWS), True),
        "syn": _num(opts, "syn", where, 0, 1, False),
        "size": _num(opts, "size", where, 0, int(lib.MG_FRAME_DATA_MAX), True),
        "ipv6": _num(opts, "ipv6", where, 0, 1, False),
        "seconds": _num(opts, "seconds", where, 0, 10**7, False),
        "packets": _num(opts, "packets", where, 0, 2**63 - 1, True),
        "rate": _num(opts, "rate", where, 0, 10**9, False),
        "seed": _num(opts, "seed", where, 0, 2**64 - 1, True),
        "flood": _num(opts, "flood", where, 0, 10**7, False),
        "flood_after": _num(opts, "flood_after", where, -1, 10**7, False),
        "keepalive": _num(opts, "keepalive", where, 0.001, 3600, False),
    }
    if o["flood"] > 0:
        if "ipv6" in opts and o["ipv6"] > 0:
            raise NicSpecError(f"{where}: flood mode sends IPv4 only: set ipv6=0")
        o["ipv6"] = 0.0
        if o["flows"] > FLOOD_MAX_FLOWS:
            raise NicSpecError(f"{where}: flood mode keeps at most {FLOOD_MAX_FLOWS} established flows, "
                               f"not flows={int(o['flows'])}")
    return o


def vip_targets(config: Any) -> list[tuple[str, int, str]]:
    """(address, port, protocol) of every VIP of a :class:`maglev.config.Config`."""
    return [(v.address, v.port, v.protocol) for v in config.vips]


class GenNic:
    """Receive side only: ``rx_burst`` fills frames with the next packets."""

    kind = "gen"

    def __init__(
        self,
        vips: Iterable[tuple[str, int, str]],
        *,
        flows: int = 10000,
        syn: float = 0.1,
        size: int = 64,
        ipv6: float = 0.2,
        seconds: float = 0.0,
        packets: int = 0,
        seed: int = 1,
        rate: float = 0.0,
        flood: float = 0.0,
        flood_after: float = -1.0,
        keepalive: float = 1.0,
    ):
        from maglev.nic import NicSpecError

        targets = list(vips)
        if flood > 0:
            targets = [t for t in targets if t[2] == "tcp" and ipaddress.ip_address(t[0]).version == 4]
            if not targets:
                raise NicSpecError("gen: flood mode needs an IPv4 TCP VIP in the configuration")
            if flows > FLOOD_MAX_FLOWS:
                raise NicSpecError(f"gen: flood mode keeps at most {FLOOD_MAX_FLOWS} established flows")
            ipv6 = 0.0
        if not targets:
            raise NicSpecError("gen: the configuration has no VIP to send traffic to")
        if len(targets) > int(lib.MG_GEN_MAX_VIPS):
            targets = targets[: int(lib.MG_GEN_MAX_VIPS)]
        arr = ffi.new("struct mg_gen_vip[]", len(targets))
        has6 = False
        for i, (addr, port, proto) in enumerate(targets):
            ip = ipaddress.ip_address(addr)
            packed = ip.packed
            ffi.memmove(arr[i].addr, packed, len(packed))
            arr[i].family = ip.version
            arr[i].proto = 6 if proto == "tcp" else 17
            arr[i].port = port
            has6 |= ip.version == 6
        if ipv6 > 0 and not has6:
            raise NicSpecError(f"gen: ipv6={ipv6:g} needs an IPv6 VIP in the configuration (set ipv6=0)")
        g = lib.mg_gen_new(arr, len(targets), flows, size, round(syn * 1e6), round(ipv6 * 1e6), seed)
        if g == ffi.NULL:
            raise NicSpecError("gen: could not build the flow templates (bad arguments or out of memory)")
        self._g = ffi.gc(g, lib.mg_gen_free)
        self.flows, self.size, self.syn, self.ipv6 = flows, size, syn, ipv6
        self.seconds = seconds
        self.limit = packets
        self.rate = rate  # packets per second, 0 = unpaced
        self._paced_from = 0  # packets produced when the pacing clock started
        self.eof = False
        self._t0: float | None = None
        self._deadline = 0.0
        self.flood = flood
        self.keepalive = keepalive
        self.flood_after = flood_after if flood_after >= 0 else 2 * keepalive
        self.keep_sent = 0
        self.flood_sent = 0

    @property
    def paced(self) -> bool:
        """Packets come by the clock (``rate``, flood mode): steering's per-burst step and
        :meth:`wait` instead of the C loop."""
        return bool(self.rate or self.flood)

    @classmethod
    def from_options(cls, opts: dict[str, str], vips: Iterable[tuple[str, int, str]], seed: int = 1) -> GenNic:
        o = validate_options(opts)
        return cls(
            vips,
            flows=int(o["flows"]),
            syn=o["syn"],
            size=int(o["size"]),
            ipv6=o["ipv6"],
            seconds=o["seconds"],
            packets=int(o["packets"]),
            seed=int(o["seed"]) if "seed" in opts else seed,
            rate=o["rate"],
            flood=o["flood"],
            flood_after=o["flood_after"],
            keepalive=o["keepalive"],
        )

    @property
    def produced(self) -> int:
        return int(lib.mg_gen_count(self._g))

    def rx_burst(self, pool: Any, descs: Any, n: int) -> int:
        if self.eof:
            return 0
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
            self._deadline = now + self.seconds if self.seconds else 0.0
            self._paced_from = self.produced
        if self._deadline and now >= self._deadline:
            self.eof = True
            return 0
        if self.limit:
            left = self.limit - self.produced
            if left <= 0:
                self.eof = True
                return 0
            n = min(n, left)
        if self.flood:
            return self._flood_burst(pool, descs, n, now)
        if self.rate:  # paced: only what is due by now
            n = min(n, int((now - self._t0) * self.rate) - (self.produced - self._paced_from))
            if n <= 0:
                return 0
        return check(lib.mg_gen_fill(self._g, pool, descs, n, time.monotonic_ns()), "gen fill")

    def _keep_due(self, now: float) -> int:
        assert self._t0 is not None
        return int((now - self._t0) * self.flows / self.keepalive) - self.keep_sent

    def _flood_burst(self, pool: Any, descs: Any, n: int, now: float) -> int:
        assert self._t0 is not None
        n_keep = max(0, min(n, self._keep_due(now)))
        n_flood = 0
        t = now - self._t0
        if self.flood_after <= t < self.flood_after + self.flood:
            n_flood = n - n_keep
            if self.rate:
                n_flood = max(0, min(n_flood, int((t - self.flood_after) * self.rate) - self.flood_sent))
        if n_keep + n_flood == 0:
            return 0
        k = check(lib.mg_gen_fill_flood(self._g, pool, descs, n_keep, n_flood, time.monotonic_ns()), "gen fill")
        self.keep_sent += n_keep
        self.flood_sent += n_flood
        return k

    def due(self, n: int) -> int:
        """How many of ``n`` frames a paced generator would fill now (``n`` when unpaced,
        before the first burst, or when a limit may end the input): steering takes only
        that many free frames, instead of marking a whole burst of frames to fill one or
        two and hand the rest back (what a paced run did before, every ~0.1 ms)."""
        if not self.rate or self._t0 is None or self.eof:
            return n
        due = int((time.monotonic() - self._t0) * self.rate) - (self.produced - self._paced_from)
        return max(0, min(n, due))

    def loop_source(self, src: Any) -> None:
        """Fill a ``struct mg_loop_gen`` for steering's C loop (``mg_steer_loop``): the
        generator, packets left before eof and the deadline, as :meth:`rx_burst` keeps
        them (the clock starts at the first call of either)."""
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
            self._deadline = now + self.seconds if self.seconds else 0.0
            self._paced_from = self.produced
        src.rate = int(self.rate) if self.rate and not self.flood else 0  # paced in C
        src.t0_ns = int(self._t0 * 1e9)
        src.paced_from = self._paced_from
        src.gen = self._g
        src.left = max(0, self.limit - self.produced) if self.limit else 2**64 - 1
        src.deadline_ns = int(self._deadline * 1e9) if self._deadline else 0

    def wait(self, timeout_s: float) -> bool:
        """A paced generator sleeps until its next packets are due (at most ``timeout_s``);
        an unpaced one always has packets until eof."""
        if self.eof or self._t0 is None or not self.paced:
            return not self.eof
        now = time.monotonic()
        t = now - self._t0
        if self.rate and not self.flood:  # until the next packet is due: as fine as the pace
            due = self._t0 + (self.produced - self._paced_from + 1) / self.rate
            time.sleep(max(0.0, min(timeout_s, due - now)))
            return True
        if self.rate or (self.flood and self.flood_after <= t < self.flood_after + self.flood):
            time.sleep(min(timeout_s, 0.0001))
            return True
        due = self._t0 + (self.keep_sent + 1) * self.keepalive / self.flows
        if self.flood and t < self.flood_after:
            due = min(due, self._t0 + self.flood_after)
        time.sleep(max(0.0, min(timeout_s, due - now)))
        return True

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"generated": self.produced}
        if self.flood:
            out.update(flood_syns=self.flood_sent, keepalives=self.keep_sent)
        return out

    def close(self) -> None:
        self.eof = True
