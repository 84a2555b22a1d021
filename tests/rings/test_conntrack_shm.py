"""Connection tables in /dev/shm (maglev/rings/conntrack_shm.py, issue 16.5): a process
killed with -9 leaves its table to the next one; a new run adopts it only when layout,
size, capacity, secret and worker count match, refuses corrupt or foreign files with a
reason and starts fresh; a kill in the middle of an adoption leaves an adoptable table."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maglev.datapath import build_tables
from maglev.datapath.engine import Packet
from maglev.datapath.native import CDataPath
from maglev.datapath.tables import read_tables
from maglev.native import ffi, lib
from maglev.rings import conntrack_shm as cs
from maglev.testing import unique
from tests.datapath.test_backend_identity import BASE, conf, flow

REPO = Path(__file__).resolve().parents[2]
KEY = cs.key_fingerprint(1, 2)
NOW = 7_000_000_000
N_FLOWS = 400


@pytest.fixture
def seg():
    """A segment name of a unique instance; every file of it removed afterwards."""
    inst = unique.name("t")
    name = cs.segment_name(inst, cs.identity_tag("/nonexistent/state", "/nonexistent/cfg"), 0)
    yield name
    cs.remove_segments(inst)
    assert not cs.list_segments(inst)


def want(capacity: int = 4096, key: int = KEY, workers: int = 2, worker: int = 0, map_fp: int = 0) -> cs.Wanted:
    return cs.Wanted(capacity, key, workers, worker, map_fp)


def fkey(i: int):
    k = ffi.new("struct mg_flow_key *")
    k.proto = 6
    k.sport = 1000 + i
    k.dport = 80
    k.src[0:4] = bytes([10, 0, i >> 8 & 255, i & 255])
    return k


def fill(ct, n: int) -> None:
    for i in range(n):
        assert lib.mg_ct_insert(ct, fkey(i), i * 0x9E3779B97F4A7C15 % (1 << 64), NOW, 300_000, 30_000,
                                i % 5, 1000 + i % 5) >= 0


def backends(ct, n: int) -> list[int]:
    return [int(lib.mg_ct_lookup(ct, fkey(i), i * 0x9E3779B97F4A7C15 % (1 << 64), NOW + 10**9, 300_000, 30_000))
            for i in range(n)]


def test_names_and_the_keep_predicate():
    tag = cs.identity_tag("/var/lib/maglev/mg1", "/etc/maglev/maglev.toml")
    name = cs.segment_name("mg1", tag, 3)
    assert name == f"maglev-mg1-ct-{tag}-3" and len(tag) == 8
    assert cs.keep_for_adoption(name)
    assert not cs.keep_for_adoption(f"{name}.new-123")  # a fresh start's temporary
    assert not cs.keep_for_adoption("maglev-mg1-4242-abcdef")  # a region
    assert cs.identity_tag("/var/lib/maglev/mg1", "/etc/other.toml") != tag
    with pytest.raises(cs.ConntrackShmError):
        cs.segment_name("bad/name", tag, 0)


def test_a_table_outlives_its_mapping_and_is_adopted_with_its_entries(seg):
    first = cs.open_table(seg, want())
    assert first is not None and not first.adopted and first.reason == ""
    fill(first.ct, 300)
    expect = backends(first.ct, 300)
    lib.mg_ct_free(first.ct)
    first.close()
    assert cs.preview(seg, want()) == (True, "")
    assert cs.preview(seg, want(workers=3))[0] is False
    again = cs.open_table(seg, want())
    assert again.adopted and again.entries == 300 and again.adoptions == 1
    assert backends(again.ct, 300) == expect
    assert again.ct.stats.inserts == 0  # counters start over (the old ones were published)
    assert lib.mg_ct_count(again.ct) == again.ct.n_used == 300
    lib.mg_ct_free(again.ct)
    again.close()


@pytest.mark.parametrize(("change", "reason"), [
    ({"capacity": 8192}, "capacity 4096 entries, this run is configured for 8192"),
    ({"key": cs.key_fingerprint(3, 4)}, "another flow-hash secret"),
    ({"workers": 4}, "made by a run of 2 workers, this run has 4"),
    # same worker count, another weighted flow -> worker map (maglev/actors/dispatch.py)
    ({"map_fp": 0x1234abcd}, "another flow -> worker map"),
])
def test_a_table_this_run_cannot_use_is_not_adopted_and_says_why(seg, change, reason, caplog):
    t = cs.open_table(seg, want())
    fill(t.ct, 50)
    lib.mg_ct_free(t.ct)
    t.close()
    caplog.set_level("INFO", "maglev.conntrack")
    t = cs.open_table(seg, want(**change))
    assert not t.adopted and reason in t.reason
    assert int(t.ct.n_used) == 0 and lib.mg_ct_count(t.ct) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any(reason in m and "starting fresh" in m for m in lines), lines
    lib.mg_ct_free(t.ct)
    t.close()
    # the fresh one is adoptable by a run with the new settings
    t = cs.open_table(seg, want(**change))
    assert t.adopted
    lib.mg_ct_free(t.ct)
    t.close()


def _damage(path: str, how: str) -> None:
    if how == "magic":
        with open(path, "r+b") as f:
            f.write(b"NOTMAGLV")
    elif how == "version":
        with open(path, "r+b") as f:
            f.seek(8)
            f.write((99).to_bytes(4, "little"))
    elif how == "geometry":
        with open(path, "r+b") as f:
            f.seek(16)
            f.write((12345).to_bytes(4, "little"))  # n_buckets not a power of two
    elif how == "truncated-header":
        os.truncate(path, 100)
    elif how == "truncated-table":
        os.truncate(path, os.path.getsize(path) - 4096)
    elif how == "grown":
        os.truncate(path, os.path.getsize(path) + 4096)
    elif how == "empty":
        os.truncate(path, 0)
    elif how == "garbage":
        with open(path, "wb") as f:
            f.write(random.Random(7).randbytes(1 << 16))


@pytest.mark.parametrize(("how", "reason"), [
    ("magic", "not a maglev connection table (wrong magic)"),
    ("version", "layout version 99, this build uses 2"),
    ("geometry", "corrupt header"),
    ("truncated-header", "truncated (shorter than the 256-byte header)"),
    ("empty", "truncated"),
    ("truncated-table", "truncated or grown"),
    ("grown", "truncated or grown"),
    ("garbage", "wrong magic"),
])
def test_a_corrupt_or_foreign_file_is_refused_with_a_reason_and_replaced_whole(seg, how, reason):
    t = cs.open_table(seg, want())
    fill(t.ct, 50)
    lib.mg_ct_free(t.ct)
    t.close()
    path = os.path.join(cs.SHM_DIR, seg)
    _damage(path, how)
    t = cs.open_table(seg, want())
    assert not t.adopted and reason in t.reason, t.reason
    assert lib.mg_ct_count(t.ct) == 0 and os.path.getsize(path) == cs.table_bytes(4096)
    lib.mg_ct_free(t.ct)
    t.close()
    assert not [n for n in os.listdir(cs.SHM_DIR) if n.startswith(seg + ".new-")]


def test_a_symlink_or_directory_under_the_name_is_refused(seg, tmp_path):
    path = os.path.join(cs.SHM_DIR, seg)
    os.symlink(tmp_path / "elsewhere", path)
    t = cs.open_table(seg, want())  # O_NOFOLLOW: refused, replaced by a real file
    assert not t.adopted and t.reason
    assert not os.path.islink(path) and not (tmp_path / "elsewhere").exists()
    lib.mg_ct_free(t.ct)
    t.close()


def test_a_directory_under_the_name_is_a_clear_error_and_leaves_nothing(seg):
    path = os.path.join(cs.SHM_DIR, seg)
    os.mkdir(path)
    try:
        assert cs.preview(seg, want()) == (False, "not a regular file")
        with pytest.raises(cs.ConntrackShmError, match="cannot put a fresh table at .*remove what is there"):
            cs.open_table(seg, want())
        assert not [n for n in os.listdir(cs.SHM_DIR) if n.startswith(seg + ".new-")]
    finally:
        os.rmdir(path)


def test_a_table_held_by_a_live_process_is_not_taken(seg):
    t = cs.open_table(seg, want())
    try:
        assert cs.preview(seg, want()) == (False, "in use by another live process (a second run of this instance?)")
        t0 = time.monotonic()
        assert cs.open_table(seg, want(), lock_timeout_s=0.2) is None
        assert time.monotonic() - t0 < 2
    finally:
        lib.mg_ct_free(t.ct)
        t.close()


ADOPT_LOOP = """
import sys
from maglev.native import lib
from maglev.rings import conntrack_shm as cs
seg = sys.argv[1]
w = cs.Wanted(int(sys.argv[2]), int(sys.argv[3]), 2, 0)
print("go", flush=True)
while True:
    t = cs.open_table(seg, w)
    assert t.adopted, t.reason
    lib.mg_ct_free(t.ct)
    t.close()
"""


def test_killing_a_process_in_the_middle_of_adoption_leaves_the_table_adoptable(seg):
    cap = 1 << 20  # recount of 131072 metadata lines: a kill lands anywhere in an adoption
    t = cs.open_table(seg, want(cap))
    fill(t.ct, 5000)
    expect = backends(t.ct, 5000)
    lib.mg_ct_free(t.ct)
    t.close()
    rng = random.Random(16)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", ADOPT_LOOP, seg, str(cap), str(KEY)],
                                stdout=subprocess.PIPE, env=env, text=True)
        try:
            assert proc.stdout.readline().strip() == "go"
            time.sleep(rng.uniform(0.005, 0.15))
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        t = cs.open_table(seg, want(cap))
        assert t.adopted, t.reason
        assert t.entries == 5000 and backends(t.ct, 5000) == expect
        lib.mg_ct_free(t.ct)
        t.close()


WORKER = f"""
import json, sys, time
from maglev.datapath import build_tables
from maglev.datapath.engine import Packet
from maglev.datapath.native import CDataPath
from maglev.rings import conntrack_shm as cs
from tests.datapath.test_backend_identity import BASE, conf, flow
seg, phase = sys.argv[1], sys.argv[2]
backends = BASE if phase == "before" else [("198.18.7.9", 1), *[b for b in BASE if b[0] != "198.18.7.3"]]
c = conf(backends)
t = cs.open_table(seg, cs.Wanted(4096, cs.key_fingerprint(*c.flow_hash_key), 2, 0))
dp = CDataPath(build_tables(c), ct_capacity=4096, shared_ct=t.ct)
now = time.monotonic_ns()
out = []
for flags in ((0x02, 0x10) if phase == "before" else (0x10,)):
    pk = [Packet(i, flow(20000 + i, flags=flags)) for i in range({N_FLOWS})]
    out = sorted(dp.process(pk, now), key=lambda o: o.seq)
print(json.dumps({{"adopted": t.adopted, "reason": t.reason, "entries": t.entries,
                  "backend": [o.backend_index for o in out]}}), flush=True)
time.sleep(60)
"""


def test_flows_keep_their_backend_across_a_kill_9_while_the_backend_set_changes(seg):
    """A data-path process keeps its table in shm, is killed with -9; the next one adopts
    the table under a changed backend set (one added in front, one removed): every flow
    whose backend still exists keeps it, although Maglev alone would move some."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = {}
    for phase in ("before", "after"):
        proc = subprocess.Popen([sys.executable, "-c", WORKER, seg, phase], stdout=subprocess.PIPE,
                                env=env, text=True, cwd=REPO)
        try:
            res[phase] = json.loads(proc.stdout.readline())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
    assert not res["before"]["adopted"] and res["after"]["adopted"], res["after"]["reason"]
    assert res["after"]["entries"] == N_FLOWS
    b1 = read_tables(build_tables(conf(BASE))).backends
    after_conf = conf([("198.18.7.9", 1), *[b for b in BASE if b[0] != "198.18.7.3"]])
    b2 = read_tables(build_tables(after_conf)).backends
    was = [b1[i].address for i in res["before"]["backend"]]
    now = [b2[i].address for i in res["after"]["backend"]]
    kept = [w == n for w, n in zip(was, now, strict=True) if w != "198.18.7.3"]
    # the control: a fresh table (Maglev hashing alone) over the new set
    fresh = CDataPath(build_tables(after_conf), ct_capacity=4096)
    alone = sorted(fresh.process([Packet(i, flow(20000 + i, flags=0x10)) for i in range(N_FLOWS)], NOW),
                   key=lambda o: o.seq)
    moved_alone = sum(1 for w, o in zip(was, alone, strict=True)
                      if w != "198.18.7.3" and b2[o.backend_index].address != w)
    print(f"kept {sum(kept)}/{len(kept)} = {sum(kept) / len(kept):.4f} of the flows whose backend "
          f"remained; Maglev alone would have moved {moved_alone}")
    assert moved_alone > 0, "the backend change must move some flows without conntrack"
    assert all(kept)


def test_an_adopted_table_with_garbage_entries_never_crashes_the_data_path(seg):
    """The header checks, the body is random (a foreign writer, a torn write): adopted,
    and packets through it are forwarded (hints are validated, keys compared in full)."""
    c = conf(BASE)
    w = cs.Wanted(4096, cs.key_fingerprint(*c.flow_hash_key), 2, 0)
    t = cs.open_table(seg, w)
    lib.mg_ct_free(t.ct)
    t.close()
    path = os.path.join(cs.SHM_DIR, seg)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(cs.HDR_SIZE)
        f.write(random.Random(16).randbytes(size - cs.HDR_SIZE))
    t = cs.open_table(seg, w)
    assert t.adopted, t.reason
    assert int(t.ct.n_used) == lib.mg_ct_count(t.ct)  # recounted from the (random) tags
    dp = CDataPath(build_tables(c), ct_capacity=4096, shared_ct=t.ct)
    dp.set_conntrack_policy(90, 0)
    for rnd in range(3):
        out = dp.process([Packet(i, flow(20000 + i, flags=0x10)) for i in range(2000)], NOW + rnd * 10**9)
        assert len(out) == 2000 and all(o.reason == "forward" for o in out)
    t.close()


def test_the_shared_key_is_validated_and_round_trips():
    from maglev import config as cfgmod
    from maglev.errors import ConfigError

    assert cfgmod.loads("").conntrack.shared is True
    c = cfgmod.loads('[conntrack]\nshared = false\nhuge_pages = "hugetlb"\n')
    assert (c.conntrack.shared, c.conntrack.huge_pages) == (False, "hugetlb")
    assert cfgmod.Config.from_dict(c.to_dict()).conntrack.shared is False
    with pytest.raises(ConfigError) as ei:
        cfgmod.loads('[conntrack]\nshared = "yes"\n')
    assert "conntrack.shared: 'yes' is not true or false" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        cfgmod.loads('[conntrack]\nhuge_pages = "hugetlb"\n')
    assert 'conntrack.huge_pages: "hugetlb" needs conntrack.shared = false' in str(ei.value)


def test_a_table_owned_by_another_user_is_refused_as_foreign(seg):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    t = cs.open_table(seg, want())
    fill(t.ct, 50)
    lib.mg_ct_free(t.ct)
    t.close()
    path = os.path.join(cs.SHM_DIR, seg)
    os.chown(path, 65534, 65534)
    assert cs.preview(seg, want()) == (False, "owned by uid 65534, not 0 (foreign)")
    t = cs.open_table(seg, want())  # refused, replaced by a fresh table of ours: never patched
    assert not t.adopted and t.reason == "owned by uid 65534, not 0 (foreign)"
    assert lib.mg_ct_count(t.ct) == 0 and os.stat(path).st_uid == 0
    lib.mg_ct_free(t.ct)
    t.close()


def test_dev_shm_too_small_for_the_fresh_tables_is_a_clear_error_before_anything_is_made():
    from maglev.datapath.ctmem import ConntrackMemoryError

    vfs = os.statvfs(cs.SHM_DIR)
    free = vfs.f_bavail * vfs.f_frsize
    one = cs.table_bytes(1 << 26)
    copies = free // one + 1
    with pytest.raises(ConntrackMemoryError, match=rf"{copies} fresh table\(s\) of .* do not fit in /dev/shm"):
        cs.check_shm_space(1 << 26, copies)
    assert cs.check_shm_space(4096, 2) == 2 * cs.table_bytes(4096)


MI_SHM = "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1024k{opt}\n"
MI_ROOT = "22 1 8:1 / / rw,relatime - ext4 /dev/vda1 rw\n"


@pytest.mark.parametrize("opt,enabled,want_pages,why", [
    ("", "always within_size advise [never] deny force", "4k", "huge=never"),
    (",huge=within_size", "always within_size advise [never] deny force", "thp", "huge=within_size"),
    (",huge=advise", "[advise]", "thp", "huge=advise"),
    (",huge=always", "always within_size advise never [deny] force", "4k", "= deny"),
    ("", "always within_size advise never deny [force]", "thp", "= force"),
])
def test_shm_pages_reads_the_mount_option_and_the_machine_override(opt, enabled, want_pages, why):
    pages, text = cs.shm_pages("/dev/shm", mountinfo=MI_ROOT + MI_SHM.format(opt=opt), shmem_enabled=enabled)
    assert pages == want_pages and why in text


def test_shm_pages_of_a_directory_not_on_tmpfs_or_unknown():
    assert cs.shm_pages("/dev/shm", mountinfo=MI_ROOT, shmem_enabled="[never]") == ("4k", "/ is ext4, not tmpfs")
    assert cs.shm_pages("/dev/shm", mountinfo="", shmem_enabled="") == ("4k", "no mount found for /dev/shm")


_CHILD = r"""
import os, re, sys
from maglev.native import ffi, lib
from maglev.rings import conntrack_shm as cs
d = sys.argv[1]
path = os.path.join(d, f"maglev-pagetest-{os.getpid()}")
cap = 1 << 17  # 8.4 MiB: several 2 MiB pages
size = cs.table_bytes(cap)
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
try:
    os.unlink(path)  # the open fd keeps the memory; nothing is left behind
    os.posix_fallocate(fd, 0, size)
    ct = lib.mg_ct_map_shared(fd, size, cap, 0)
    assert ct != ffi.NULL
    k = ffi.new("struct mg_flow_key *")
    for i in range(cap // 2):
        k.sport = i & 0xFFFF
        k.dport = i >> 16
        lib.mg_ct_insert(ct, k, (i * 0x9E3779B97F4A7C15) % (1 << 64), 10**9, 300000, 30000, 0, 1)
    roll = open("/proc/self/smaps_rollup").read()
    pmd = int(re.search(r"ShmemPmdMapped:\s+(\d+)", roll).group(1))
    print(cs.shm_pages(d)[0], pmd)
finally:
    os.close(fd)
"""


def _pages_and_pmd(directory: str, mount_opts: str | None) -> tuple[str, int]:
    script = "" if mount_opts is None else f"mount -t tmpfs -o {mount_opts} hct {directory} && "
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           f'{script}exec "$0" -c "$1" "$2"', sys.executable, _CHILD, directory]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    pages, pmd = out.stdout.split()
    return pages, int(pmd)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
                    or not Path("/usr/bin/unshare").exists(),
                    reason="needs root, unshare(1) and a kernel with shmem transparent huge pages")
def test_shm_pages_says_what_the_kernel_really_maps(tmp_path):
    """The prediction agrees with /proc/self/smaps_rollup: a tmpfs mounted (in a private
    mount namespace) with huge=within_size maps the table with 2 MiB pages; /dev/shm as the
    machine has it is reported as it is."""
    enabled = cs._selected(Path(cs.SHMEM_ENABLED).read_text())
    d = tmp_path / "hugetmp"
    d.mkdir()
    pages, pmd = _pages_and_pmd(str(d), "huge=within_size,size=64m")
    if enabled == "deny":
        assert pages == "4k" and pmd == 0
    else:
        assert pages == "thp" and pmd > 0
    pages, pmd = _pages_and_pmd(cs.SHM_DIR, None)
    assert (pages == "thp") == (pmd > 0)
