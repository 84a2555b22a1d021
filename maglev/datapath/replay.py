"""Replay a capture file through the data path: what ``maglev replay`` does.

Each record becomes a :class:`~maglev.datapath.engine.Packet` (the reader already gave it an
Ethernet header); records are fed in bursts of up to ``MG_BURST_MAX`` and the burst's clock
is the capture's own timestamps (never going backwards), so connection-table idle timeouts
and fragment expiry behave as they would have on the wire.  At the end the fragment table
is flushed (an hour past the last packet) so held fragments are accounted for as
``frag_expired``.

Accounting is per input record, from the outputs: a record is *forwarded* when at least
one frame of it left toward a backend; otherwise it is *dropped* with exactly one reason
(a record answered with an ICMP error counts as dropped ``too_big`` and, separately, in
``icmp_sent``); with an ``instance.pool`` a fragment sent to its owner instance counts as
*redirected* instead.  So ``packets_in == forwarded + redirected + sum(dropped)`` holds by
construction, and
:func:`replay` checks it anyway (an engine bug would show up as a ``ReplayError``).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maglev.config import Config
from maglev.datapath import DataPath
from maglev.datapath.engine import BURST_MAX, DROP_CODES, Output, Packet, verdict_name
from maglev.datapath.tables import build_tables, read_tables
from maglev.errors import MaglevError
from maglev.nic.pcapfile import PcapReader, PcapWriter

FLUSH_AFTER_NS = 3600 * 1_000_000_000


class ReplayError(MaglevError, RuntimeError):
    """The replay's accounting did not add up (an engine bug)."""


def replay(
    path: str | Path,
    config: Config,
    *,
    out: str | Path | None = None,
    engine: str = "c",
    ct_capacity: int | None = None,
    progress: Callable[[int], None] | None = None,
    outputs: list[Output] | None = None,
) -> dict[str, Any]:
    """Run every record of ``path`` through a data path built from ``config``.

    Returns the summary dict (see the module docstring and docs/datapath.md); ``out``
    receives every transmitted frame (encapsulated packets and generated ICMP errors) as
    classic pcap.  ``progress(bytes_read)`` is called once per burst.  ``outputs``, when
    given, collects every :class:`Output` (tests use it).  Raises
    :class:`~maglev.errors.PacketError` when the file cannot be read at all."""
    blob = build_tables(config)
    view = read_tables(blob)
    reader = PcapReader(path)
    writer = PcapWriter(out) if out else None
    try:
        dp = DataPath(blob, engine=engine, ct_capacity=ct_capacity or config.conntrack.capacity)
        # Each input's outputs all come out of one process()/flush() call (a held fragment
        # in a later one), so only inputs still inside the data path are remembered:
        # memory stays bounded by the fragment table, not by the file.
        pending: dict[int, int] = {}  # seq -> capture timestamp
        forwarded = 0
        redirected = 0  # fragments sent to their owner instance (instance.pool)
        dropped: Counter[str] = Counter()
        icmp_sent = 0
        per_backend: Counter[int] = Counter()
        per_vip: Counter[int] = Counter()
        packets_in = 0
        now = 0

        def take(outs: list[Output]) -> None:
            nonlocal icmp_sent, forwarded, redirected
            groups: dict[int, list[Output]] = {}
            for o in outs:
                groups.setdefault(o.seq, []).append(o)
                if outputs is not None:
                    outputs.append(o)
            for seq, group in groups.items():
                ts = pending.pop(seq, now)
                fwd = None
                icmp = 0
                for o in group:
                    if o.action == "tx":
                        if writer:
                            writer.write(o.data, ts)
                        if o.reason == "icmp":
                            icmp += 1
                        elif fwd is None:
                            fwd = o
                icmp_sent += icmp
                if fwd is not None and fwd.reason == "redirected":
                    redirected += 1
                elif fwd is not None:
                    forwarded += 1
                    per_backend[fwd.backend_index] += 1
                    per_vip[fwd.vip_index] += 1
                elif icmp:
                    dropped["too_big"] += 1
                else:
                    dropped[group[0].reason] += 1

        batch: list[Packet] = []
        for rec in reader:
            packets_in += 1
            if not rec.ok:
                dropped["unsupported_linktype"] += 1
                if outputs is not None:
                    outputs.append(Output(rec.index, "drop", DROP_CODES["unsupported_linktype"], b"", 0, -1))
                continue
            pending[rec.index] = rec.ts_ns
            now = max(now, rec.ts_ns)
            batch.append(Packet(rec.index, rec.data, rec.orig_len))
            if len(batch) == BURST_MAX:
                take(dp.process(batch, now))
                batch = []
                if progress:
                    progress(reader.position)
        if batch:
            take(dp.process(batch, now))
        take(dp.flush(now + FLUSH_AFTER_NS))
        if progress:
            progress(reader.position)
        stats = dp.stats()
    finally:
        reader.close()
        if writer:
            writer.close()

    if pending or forwarded + redirected + sum(dropped.values()) != packets_in:
        raise ReplayError(
            f"accounting mismatch: {packets_in} packets in, {forwarded} forwarded, "
            f"{redirected} redirected, "
            f"{sum(dropped.values())} dropped, {len(pending)} never came out of the data path"
        )

    def backend_addr(i: int) -> str:
        return view.backends[i].address

    def vip_key(i: int) -> str:
        v = view.vips[i]
        host = f"[{v.address}]" if v.family == 6 else v.address
        proto = {6: "tcp", 17: "udp"}.get(v.proto, str(v.proto))
        return f"{host}:{v.port}/{proto}"

    by_addr: Counter[str] = Counter()
    for i, n in per_backend.items():
        by_addr[backend_addr(i)] += n
    summary: dict[str, Any] = {
        "file": str(path),
        "format": reader.format,
        "engine": engine,
        "packets_in": packets_in,
        "forwarded": forwarded,
        "redirected": redirected,
        "dropped": dict(sorted(dropped.items())),
        "icmp_sent": icmp_sent,
        "per_backend": dict(sorted(by_addr.items(), key=lambda kv: _addr_sort(kv[0]))),
        "per_vip": {vip_key(i): n for i, n in sorted(per_vip.items())},
        "conntrack": stats["conntrack"],
        "out": str(out) if out else None,
        "error": str(reader.error) if reader.error else None,
    }
    return summary


def _addr_sort(a: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(a)
    return ip.version, int(ip)


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable form ``maglev replay`` prints."""
    lines = [
        f"{s['file']} ({s['format']}, engine {s['engine']}): {s['packets_in']} packets in, "
        f"{s['forwarded']} forwarded, {sum(s['dropped'].values())} dropped, "
        f"{s['icmp_sent']} ICMP errors sent",
    ]
    if s["dropped"]:
        lines.append("dropped:")
        lines += [f"  {reason:<24} {n}" for reason, n in s["dropped"].items()]
    if s["per_vip"]:
        lines.append("per VIP (forwarded):")
        lines += [f"  {k:<40} {n}" for k, n in s["per_vip"].items()]
    if s["per_backend"]:
        lines.append("per backend (forwarded):")
        lines += [f"  {k:<40} {n}" for k, n in s["per_backend"].items()]
    ct = s["conntrack"]
    lines.append(
        f"conntrack: {ct.get('inserts', 0)} inserts, {ct.get('hits', 0)} hits, "
        f"{ct.get('insert_failed', 0)} insert failures, {ct.get('reselected', 0)} re-selected"
    )
    if s["out"]:
        lines.append(f"wrote {s['forwarded']} forwarded + {s['icmp_sent']} ICMP packets to {s['out']}")
    return "\n".join(lines)


__all__ = ["ReplayError", "format_summary", "replay", "verdict_name"]
