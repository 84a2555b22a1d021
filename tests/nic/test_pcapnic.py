"""The capture NICs: records into frames, what cannot become a frame is counted, resume."""

from __future__ import annotations

import struct

from maglev.native import ffi, lib
from maglev.nic.pcapfile import PcapReader, PcapWriter
from maglev.nic.pcapnic import DATA_MAX, PcapRx, PcapTx

FRAME = int(lib.MG_FRAME_SIZE)
META = int(lib.MG_FRAME_META_SIZE)


def pool(n: int):
    return ffi.new("uint8_t[]", n * FRAME), ffi.new("uint64_t[]", list(range(n)))


def frame(i: int) -> bytes:
    return bytes(6) + bytes(5) + bytes([i]) + b"\x08\x00" + bytes([0x45]) + bytes(40 + i)


def test_records_become_frames_and_oversize_records_are_counted(tmp_path):
    path = tmp_path / "in.pcap"
    with PcapWriter(path) as w:
        w.write(frame(1), 1_000)
        w.write(b"\xaa" * (DATA_MAX + 1), 2_000)  # larger than a frame's data area
        w.write(frame(2), 3_000, orig_len=9000)  # truncated capture: wire_len keeps 9000
    rx = PcapRx(str(path))
    buf, descs = pool(4)
    assert rx.rx_burst(buf, descs, 4) == 2
    assert rx.rx_burst(buf, descs, 4) == 0 and rx.eof
    assert rx.drops == {"unsupported_linktype": 0, "frame_overflow": 1}
    m1 = ffi.cast("struct mg_frame_meta *", buf + FRAME)
    assert (m1.len, m1.wire_len, m1.seq, m1.rx_ts_ns) == (len(frame(2)), 9000, 2, 3_000)
    assert m1.data_off == lib.MG_FRAME_HEADROOM
    got = bytes(ffi.buffer(buf + FRAME + META + m1.data_off, m1.len))
    assert got == frame(2)
    assert rx.stats()["records"] == 3
    rx.close()


def test_unsupported_link_type_is_counted(tmp_path):
    path = tmp_path / "usb.pcap"
    # A classic pcap header with link type 189 (USB): nothing maglev can forward.
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 189)
    rec = struct.pack("<IIII", 0, 0, 4, 4) + b"\x01\x02\x03\x04"
    path.write_bytes(hdr + rec + rec)
    rx = PcapRx(str(path))
    buf, descs = pool(2)
    assert rx.rx_burst(buf, descs, 2) == 0
    assert rx.eof and rx.drops["unsupported_linktype"] == 2
    rx.close()


def test_skip_resumes_after_what_was_read(tmp_path):
    path = tmp_path / "in.pcap"
    with PcapWriter(path) as w:
        for i in range(10):
            w.write(frame(i), i)
    rx = PcapRx(str(path))
    assert rx.skip(7) == 7
    buf, descs = pool(8)
    assert rx.rx_burst(buf, descs, 8) == 3
    assert [ffi.cast("struct mg_frame_meta *", buf + j * FRAME).seq for j in range(3)] == [7, 8, 9]
    assert rx.skip(5) == 0 and rx.eof
    rx.close()


def test_damaged_capture_ends_at_the_damage_and_says_where(tmp_path):
    path = tmp_path / "cut.pcap"
    with PcapWriter(path) as w:
        w.write(frame(1), 1)
        w.write(frame(2), 2)
    path.write_bytes(path.read_bytes()[:-10])  # the last record is cut short
    rx = PcapRx(str(path))
    buf, descs = pool(4)
    assert rx.rx_burst(buf, descs, 4) == 1
    assert rx.eof
    assert rx.error
    assert "error" in rx.stats()
    rx.close()


def test_tx_writes_frames_with_their_timestamps_and_refuses_bad_metadata(tmp_path):
    buf, descs = pool(3)
    for j, ts in enumerate((5_000, 6_000, 7_000)):
        m = ffi.cast("struct mg_frame_meta *", buf + j * FRAME)
        data = frame(j)
        m.data_off, m.len, m.rx_ts_ns = lib.MG_FRAME_HEADROOM, len(data), ts
        ffi.memmove(buf + j * FRAME + META + m.data_off, data, len(data))
    ffi.cast("struct mg_frame_meta *", buf + 2 * FRAME).len = FRAME  # runs past the frame
    path = tmp_path / "out.pcap"
    tx = PcapTx(str(path))
    assert tx.tx_burst(buf, descs, 3) == 2  # the bad one (and anything after) is refused
    tx.close()
    with PcapReader(path) as r:
        recs = list(r)
    assert [rec.data for rec in recs] == [frame(0), frame(1)]
    assert [rec.ts_ns for rec in recs] == [5_000, 6_000]
