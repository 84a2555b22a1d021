"""Capture-file NICs: ``--nic pcap:IN.pcap`` (receive) and ``--out OUT.pcap`` (transmit).

Receive copies each record (read by :mod:`maglev.nic.pcapfile`, pcap or pcapng, any
supported link type turned into Ethernet) into a pool frame: ``len`` = captured bytes,
``wire_len`` = original length, ``seq`` = the record's position in the file, ``rx_ts_ns``
= the capture timestamp.  Records that cannot become a frame never enter the pipeline;
they are counted here, by the same reason names the data path uses, so ``packets_in``
still covers every record: ``unsupported_linktype`` and ``frame_overflow`` (a record
larger than a frame's data area).  A damaged file ends the input at the damage (the
records before it are replayed) and ``error`` says where.

Transmit writes every frame the muxer hands it as one classic pcap record, stamped with
its ``rx_ts_ns`` (so a replayed capture keeps its timing).  Both sides work per packet
in Python: a capture NIC is for tests and replays, not for speed.
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any

from maglev.errors import PacketError
from maglev.native import ffi, lib
from maglev.nic.pcapfile import PcapReader, PcapWriter

FRAME = int(lib.MG_FRAME_SIZE)
META = int(lib.MG_FRAME_META_SIZE)
HEADROOM = int(lib.MG_FRAME_HEADROOM)
DATA_MAX = FRAME - META - HEADROOM

log = logging.getLogger(__name__)


class PcapRx:
    kind = "pcap"

    def __init__(self, path: str):
        self.path = path
        self.reader = PcapReader(path)
        self._it = iter(self.reader)
        self.eof = False
        self.packets = 0
        self.drops = {"unsupported_linktype": 0, "frame_overflow": 0}

    def rx_burst(self, pool: Any, descs: Any, n: int) -> int:
        if self.eof:
            return 0
        k = 0
        while k < n:
            recs = list(islice(self._it, n - k))
            if not recs:
                self.eof = True
                break
            for rec in recs:
                if not rec.ok:
                    self.drops["unsupported_linktype"] += 1
                    continue
                data = rec.data
                if len(data) > DATA_MAX:
                    self.drops["frame_overflow"] += 1
                    continue
                idx = int(descs[k]) & 0xFFFFFFFF
                m = ffi.cast("struct mg_frame_meta *", pool + idx * FRAME)
                m.len = len(data)
                m.data_off = HEADROOM
                m.flow_hash = 0
                m.flags = 0
                m.verdict = 0
                m.wire_len = max(rec.orig_len, len(data))
                m.vip_index = 0
                m.worker = 0
                m.backend_index = -1
                m.rx_ts_ns = rec.ts_ns
                m.seq = rec.index
                ffi.memmove(pool + idx * FRAME + META + HEADROOM, data, len(data))
                k += 1
        self.packets += k
        return k

    def skip(self, n: int) -> int:
        """Pass over the next ``n`` records (a restarted steering resuming); returns how
        many were skipped (fewer at the end of the file)."""
        done = sum(1 for _ in islice(self._it, n))
        if done < n:
            self.eof = True
        return done

    @property
    def error(self) -> str:
        err = getattr(self.reader, "error", None)
        return str(err) if err else ""

    def wait(self, timeout_s: float) -> bool:
        return not self.eof

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"records": self.packets + sum(self.drops.values()), "drops": dict(self.drops)}
        if self.error:
            out["error"] = self.error
        return out

    def close(self) -> None:
        self.eof = True
        self.reader.close()


class PcapTx:
    """``--out OUT.pcap``.  Each burst is flushed before ``tx_burst`` returns, so the file
    holds exactly the records the muxer counts as sent: a write that fails (a full disk)
    keeps the burst's written prefix, the rest is refused (the muxer counts it as
    ``tx_errors``), the error is logged once per outage and shown in ``stats()``.  A
    restarted muxer (``resume``) continues the file of the one that was killed instead of
    starting it anew."""

    kind = "pcap"

    def __init__(self, path: str, *, resume: bool = False):
        self.path = path
        self.writer = PcapWriter(path, resume=resume)
        self.packets = 0
        self.write_errors = 0
        self.error = ""

    def tx_burst(self, pool: Any, descs: Any, n: int) -> int:
        w = self.writer
        before = w.count
        try:
            for j in range(n):
                idx = int(descs[j]) & 0xFFFFFFFF
                m = ffi.cast("struct mg_frame_meta *", pool + idx * FRAME)
                if m.data_off + m.len > FRAME - META:
                    # Never read past the frame; the muxer counts what we refuse as tx
                    # errors.  Refusing must keep hand order: what was written is a prefix.
                    break
                start = idx * FRAME + META + m.data_off
                w.write(ffi.buffer(pool + start, m.len)[:], m.rx_ts_ns)  # may flush (and fail)
            w.flush()
        except PacketError as exc:  # the written prefix is in w.count; the rest is refused
            self.write_errors += 1
            if str(exc) != self.error:
                log.error("cannot write the output capture; refusing packets", extra={"kv": {"error": str(exc)}})
            self.error = str(exc)
        else:
            if self.error:
                log.warning("writing the output capture again", extra={"kv": {"path": self.path}})
                self.error = ""
        sent = max(0, w.count - before)
        self.packets += sent
        return sent

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tx_packets": self.packets, "write_errors": self.write_errors}
        if self.error:
            out["error"] = self.error
        return out

    def close(self) -> None:
        try:
            self.writer.close()
        except PacketError as exc:  # everything counted as sent was flushed per burst
            log.error("cannot close the output capture", extra={"kv": {"error": str(exc)}})
