"""The C seqlock (mg_stats.h) under a real race: a writer process publishes groups of
words through ``mg_seq_write`` as fast as it can while this process reads them with
``mg_seq_read``.  Every group the writer publishes has all its words equal (to a counter
that only grows), so a copy whose words differ, or a value that goes backwards, could only
come from a torn read the seqlock failed to detect.  The same loop also copies the words
with no seqlock, to show the race is real (reported, not asserted: it depends on the
scheduler)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time

from maglev.native import ffi, lib

N_WORDS = 64  # a whole stats block: the largest group the trace block locks
SECONDS = 3.0

WRITER = r"""
import mmap, sys, time
from maglev.native import ffi, lib
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open(path, "r+b") as f:
    mm = mmap.mmap(f.fileno(), 8 * (n + 2))
buf = ffi.from_buffer("uint64_t[]", mm)
src = ffi.new("uint64_t[]", n)
k = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(200):
        k += 1
        src[0:n] = [k] * n
        lib.mg_seq_write(buf + 0, buf + 1, src, n)
print(k)
"""


def test_seqlock_reader_never_sees_a_torn_group(tmp_path):
    path = tmp_path / "words"
    path.write_bytes(b"\0" * 8 * (N_WORDS + 2))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(N_WORDS), str(SECONDS)],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        with open(path, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 8 * (N_WORDS + 2))
        buf = ffi.from_buffer("uint64_t[]", mm)
        out = ffi.new("uint64_t[]", N_WORDS)
        reads = busy = raw_torn = 0
        last = 0
        values = set()
        deadline = time.monotonic() + SECONDS + 30
        while writer.poll() is None and time.monotonic() < deadline:
            rc = lib.mg_seq_read(buf + 0, buf + 1, out, N_WORDS, 16)
            if rc < 0:
                busy += 1
            else:
                got = list(out)
                assert len(set(got)) == 1, f"torn read passed the seqlock: {sorted(set(got))[:4]}"
                assert got[0] >= last, f"went backwards: {got[0]} after {last}"
                last = got[0]
                values.add(got[0])
                reads += 1
            raw = [int(buf[1 + i]) for i in range(N_WORDS)]  # the same copy, no seqlock
            raw_torn += len(set(raw)) > 1
        assert writer.wait(30) == 0
        final = int(writer.stdout.read().strip())
        assert lib.mg_seq_read(buf + 0, buf + 1, out, N_WORDS, 1) == 0 and list(out) == [final] * N_WORDS
        assert int(buf[0]) % 2 == 0  # the writer left the sequence even
        # The race was real: the writer moved on many times while we read.
        assert reads > 100 and len(values) > 10, (reads, len(values), busy, raw_torn)
        print(f"reads {reads}, distinct values {len(values)}, retried out {busy}, "
              f"torn copies without the seqlock {raw_torn}")
        del buf
        mm.close()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if writer.stdout:
            writer.stdout.close()
