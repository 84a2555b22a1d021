"""Child-process roles for the two-process ring tests (run as a script by the tests).

Every role attaches the region by name, is bounded in count *and* time, prints one JSON
line with its result and exits.  Roles:

  produce NAME COUNT BURST SECONDS      rx(0) producer; stamps frame metadata + descriptor
  sleeper NAME BELL TIMEOUT_MS SECONDS  waits on a doorbell; prints when it woke
  tables  NAME WORKER SECONDS           table reader verifying every byte of each copy
  hold    NAME WORKER                   acquire once, wait for a line on stdin, acquire again
  churn   NAME SECONDS                  worker 0 via its hand: rx(0) -> tx(0) / ret(0)
"""

from __future__ import annotations

import json
import os
import sys
import time

from maglev.native import ffi, lib
from maglev.rings import Region, worker_bell, worker_slot

SEQ_WORD = 80 // 8  # struct mg_frame_meta.seq is at byte 80 of the frame
FRAME_WORDS = 2048 // 8


def stamp(seq: int, n_frames: int) -> int:
    """The descriptor for sequence number seq: frame index in the low 32 bits, seq above."""
    return (seq << 32) | (seq % n_frames)


def table_blob(gen: int, size: int) -> bytes:
    return gen.to_bytes(8, "little") + bytes([gen & 0xFF]) * (size - 8)


def produce(name: str, count: int, burst: int, seconds: float) -> dict:
    region = Region.attach(name)
    ring = region.rx(0)
    ring.reset_producer()
    words = memoryview(ffi.buffer(region.pool_ptr, region.n_frames * 2048)).cast("Q")
    buf = ffi.new("uint64_t[]", burst)
    seq = 0
    full = 0
    deadline = time.monotonic() + seconds
    while seq < count and time.monotonic() < deadline:
        n = min(burst, count - seq)
        for i in range(n):
            s = seq + i
            f = s % region.n_frames
            words[f * FRAME_WORDS + SEQ_WORD] = s  # frame content, written before submit
            buf[i] = stamp(s, region.n_frames)
        k = ring.enqueue(buf, n)
        seq += k
        if k < n:
            full += 1
            os.sched_yield()
    del words
    region.close()
    return {"produced": seq, "full": full}


def sleeper(name: str, bell: int, timeout_ms: int, seconds: float) -> dict:
    region = Region.attach(name)
    b = region.bell(bell)
    t0 = time.monotonic()
    woke = None
    waits = 0
    while time.monotonic() - t0 < seconds:
        waits += 1
        if b.wait(timeout_ms, spin=0):
            woke = time.monotonic()
            break
    region.close()
    return {"woke": woke, "waits": waits}


def tables(name: str, worker: int, seconds: float) -> dict:
    region = Region.attach(name)
    region.tables.quiesce(worker)
    g = ffi.new("uint64_t *")
    checks = errors = 0
    gens = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        p = lib.mg_tables_acquire(region.base, worker, g)
        gen = int(g[0])
        if p == ffi.NULL:
            continue
        gens.add(gen)
        size = int(lib.mg_tables_size(region.base, gen))
        # read the copy several times during the "burst": it must not change under us
        for _ in range(3):
            if ffi.buffer(p, size)[:] != table_blob(gen, size):
                errors += 1
            checks += 1
    region.tables.quiesce(worker)
    region.close()
    return {"checks": checks, "errors": errors, "generations": len(gens)}


def hold(name: str, worker: int) -> dict:
    region = Region.attach(name)
    region.tables.quiesce(worker)
    g1, _ = region.tables.acquire(worker)
    print(json.dumps({"acquired": g1}), flush=True)
    sys.stdin.readline()
    g2, _ = region.tables.acquire(worker)
    region.close()
    return {"first": g1, "second": g2}


def churn(name: str, seconds: float) -> dict:
    """Worker 0's loop with the hand journal: pull from rx(0), send even frames to tx(0)
    and odd ones to ret(0).  Killed by the test at a random moment."""
    region = Region.attach(name)
    hand = region.hand(worker_slot(0))
    rx, tx, ret = region.rx(0), region.tx(0), region.ret(0)
    rx.reset_consumer()
    tx.reset_producer()
    ret.reset_producer()
    bell = region.bell(worker_bell(0))
    moved = 0
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # pull only while the outputs keep up (a real worker works in bursts too)
        if not (hand.count() < 64 and hand.pull(rx, 64)) and not hand.count():
            bell.wait(10, spin=0)
            continue
        dest = [(tx.id if d % 2 == 0 else ret.id) for d in hand.descs()]
        moved += hand.push(dest)
        if hand.count():  # an output ring is full: the rest stays in the hand, in order
            os.sched_yield()
    region.close()
    return {"moved": moved}


def main(argv: list[str]) -> int:
    role, name, *rest = argv
    if role == "produce":
        out = produce(name, int(rest[0]), int(rest[1]), float(rest[2]))
    elif role == "sleeper":
        out = sleeper(name, int(rest[0]), int(rest[1]), float(rest[2]))
    elif role == "tables":
        out = tables(name, int(rest[0]), float(rest[1]))
    elif role == "hold":
        out = hold(name, int(rest[0]))
    elif role == "churn":
        out = churn(name, float(rest[0]))
    else:
        raise SystemExit(f"unknown role {role}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
