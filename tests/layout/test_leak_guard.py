"""The leak guard of tests/conftest.py (maglev/testing/leaks.py) on a test session of its
own: it reports what a test leaves (a shm region, a namespace, a process, a run folder) as
an error naming the test that made it, removes it, drops the connection tables a stopped
run kept for adoption, and lets a clean test pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maglev.testing.netns import why_no_netns

REPO = Path(__file__).resolve().parents[2]

LEAKY = '''
import os, subprocess, sys, tempfile
import pytest
from maglev.rings.region import Region
from maglev.rings import conntrack_shm as cs
from maglev.native import lib
from maglev.actors.supervisor import make_run_dir

TAG = os.environ["LEAK_TAG"]

def test_leaks_region():
    r = Region.create(f"{TAG}-leak", 1, 64, 64, 0)
    r.close()

def test_keeps_a_table_for_adoption():  # dropped by the guard, not an error
    o = cs.open_table(cs.segment_name(TAG, "0badcafe", 0), cs.Wanted(1024, 1, 1, 0))
    lib.mg_ct_free(o.ct)
    o.close()

def test_leaks_run_folder_of_a_dead_run():
    code = "from maglev.actors.supervisor import make_run_dir; print(make_run_dir(%r))" % TAG
    subprocess.run([sys.executable, "-c", code], check=True)

def test_leaks_process():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)

@pytest.fixture(scope="module")
def held():
    r = Region.create(f"{TAG}-mod", 1, 64, 64, 0)
    yield r
    r.close()  # not unlinked: a leak, but only once the module's fixtures are torn down


def test_uses_the_module_fixture(held):
    pass

def test_clean():
    r = Region.create(f"{TAG}-ok", 1, 64, 64, 0)
    r.close()
    r.unlink()
'''

NETNS = '''
from maglev.testing.netns import NetnsSet

def test_leaks_netns():
    NetnsSet("lkg").add("a")

def test_next():
    pass
'''


AS_NOBODY = '''
import os, subprocess
from maglev.testing import unprivileged as up

TAG = os.environ["LEAK_TAG"]

def test_leaks_as_nobody(leak_record):
    uid, gid = up.user_ids()
    rec = leak_record(uid, gid)
    # what a maglev process run as nobody does: note, then make; and it stays running.
    # Its environment is scrubbed but for the record file it was given.
    script = 'printf "shm\\tmaglev-%s-nobody\\n" >> "$MAGLEV_RECORD"; : > /dev/shm/maglev-%s-nobody; exec sleep 60' % (TAG, TAG)
    p = subprocess.Popen([*up.setpriv_argv([]), "sh", "-c", script], env={"MAGLEV_RECORD": rec, "PATH": "/usr/bin:/bin"},
                         start_new_session=True)
    while not os.path.exists(f"/dev/shm/maglev-{TAG}-nobody"):
        assert p.poll() is None
    assert os.stat(f"/dev/shm/maglev-{TAG}-nobody").st_uid == uid

def test_after():
    pass
'''


HOLDER = '''
import os, subprocess, sys, time
from maglev.actors.supervisor import make_run_dir
from maglev.rings.region import Region
from maglev.testing.netns import NetnsSet, why_no_netns

TAG = os.environ["LEAK_TAG"]
GO = os.environ["LEAK_GO"]

def test_holds_things_while_another_session_runs():
    r = Region.create(f"{TAG}-held", 1, 64, 64, 0)
    make_run_dir(TAG)  # this process owns it: alive until the session ends
    if not why_no_netns():
        NetnsSet("lkh").add("a")
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    open(GO + ".ready", "w").close()
    end = time.monotonic() + 100
    while not os.path.exists(GO) and time.monotonic() < end:
        time.sleep(0.05)
    r.close()  # not unlinked: this session's guard reports it, and the rest
'''

SAME_NAMES = '''
import os
import pytest
from maglev.errors import MaglevError
from maglev.rings.region import Region

TAG = os.environ["LEAK_TAG"]
HELD = f"/dev/shm/maglev-{TAG}-held"

def test_a_name_the_other_session_holds():
    with pytest.raises(MaglevError, match="already exists"):
        Region.create(f"{TAG}-held", 1, 64, 64, 0)  # noted, then found taken: not ours

def test_same_instance_name_clean():
    assert os.path.exists(HELD)  # the guard neither reported nor removed it
    r = Region.create(f"{TAG}-mine", 1, 64, 64, 0)
    r.close()
    r.unlink()

def test_after():
    assert os.path.exists(HELD)
'''


def _session_argv(tmp_path: Path, body: str, name: str = "test_leaky.py") -> tuple[list[str], dict[str, str], str]:
    (tmp_path / name).write_text(body)
    tag = f"lkg{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGLEV_")}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", LEAK_TAG=tag)
    argv = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
            "-W", "ignore::pytest.PytestAssertRewriteWarning", str(tmp_path / name)]
    return argv, env, tag


def _session(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    argv, env, tag = _session_argv(tmp_path, body)
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return r, tag


def test_the_guard_reports_and_removes_each_kind_of_leak(tmp_path):
    r, tag = _session(tmp_path, LEAKY)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "ERROR at teardown of test_leaks_region" in out
    assert f"shm maglev-{tag}-leak (no process uses it), made during test_leaky.py::test_leaks_region" in out
    assert "ERROR at teardown of test_leaks_run_folder_of_a_dead_run" in out
    assert "its run is gone), made during test_leaky.py::test_leaks_run_folder_of_a_dead_run" in out
    assert "ERROR at teardown of test_leaks_process" in out
    assert "still running), made during test_leaks_process" not in out.split("test_leaks_process ___")[0]
    assert "still running), made during test_leaky.py::test_leaks_process" in out
    # something still in use when a module fixture is alive: judged when the module ends
    assert "ERROR at teardown of test_clean" in out
    assert "ERROR at teardown of test_uses_the_module_fixture" not in out
    assert f"shm maglev-{tag}-mod (no process uses it), made during test_leaky.py::test_uses_the_module_fixture" in out
    assert "teardown of test_keeps_a_table" not in out
    assert "0 still there; dropped 1 connection table(s)" in out
    assert "6 passed, 4 errors" in out, out
    assert not [n for n in os.listdir("/dev/shm") if tag in n]


def test_the_guard_reports_a_namespace_left(tmp_path):
    if reason := why_no_netns():
        pytest.skip(reason)
    r, _ = _session(tmp_path, NETNS)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ERROR at teardown of test_leaks_netns" in r.stdout
    m = re.search(r"netns (mgt-lkg-\S+) \(still there after its fixtures\), made during test_leaky.py::test_leaks_netns",
                  r.stdout)
    assert m, r.stdout
    assert m[1] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_the_guard_sees_what_a_process_run_as_another_user_leaves(tmp_path):
    from maglev.testing.unprivileged import why_no_unprivileged

    if reason := why_no_unprivileged():
        pytest.skip(reason)
    import glob

    def folders() -> set[str]:
        return {d for base in ("/var/tmp", "/dev/shm", os.environ.get("TMPDIR", "/tmp"))
                for d in glob.glob(os.path.join(base, "maglev-leakrec-*"))}

    before = folders()
    r, tag = _session(tmp_path, AS_NOBODY)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "ERROR at teardown of test_leaks_as_nobody" in out
    assert f"shm maglev-{tag}-nobody (no process uses it), made during test_leaky.py::test_leaks_as_nobody" in out
    assert "sleep 60 (pid" in out and "still running), made during test_leaky.py::test_leaks_as_nobody" in out
    assert "ERROR at teardown of test_after" not in out
    assert not [n for n in os.listdir("/dev/shm") if tag in n]  # removed, and the process killed
    assert not folders() - before  # the session removed its folder of record files


def test_a_concurrent_session_is_never_judged_by_this_one(tmp_path):
    """Two test sessions on one machine (CI and a developer): session A holds a region, a
    live run folder, a namespace and a process, all named with the instance name session B
    uses too, while B runs; B's guard judges only what B's tests recorded (passes, nothing
    reported), and A's guard reports A's own leaks with A's tests, after B is done."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    go = tmp_path / "go"
    argv, env, tag = _session_argv(a_dir, HOLDER, "test_holder.py")
    a = subprocess.Popen(argv, cwd=a_dir, env={**env, "LEAK_GO": str(go)}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 60
        while not Path(f"{go}.ready").exists():
            assert a.poll() is None and time.monotonic() < end, "session A did not get ready"
            time.sleep(0.05)
        argv_b, env_b, _ = _session_argv(b_dir, SAME_NAMES, "test_same.py")
        b = subprocess.run(argv_b, cwd=b_dir, env=env_b, capture_output=True, text=True, timeout=120)
        go.touch()
        out_a = a.communicate(timeout=120)[0]
    finally:
        go.touch()
        if a.poll() is None:
            a.kill()
            a.wait()
    assert b.returncode == 0, b.stdout + b.stderr
    assert "3 passed" in b.stdout and "left behind" not in b.stdout
    assert "the tests made 1 shm files, run folders, namespaces and links; 0 still there" in b.stdout, b.stdout
    assert a.returncode == 1, out_a
    assert f"shm maglev-{tag}-held" in out_a and "made during test_holder.py::test_holds_things" in out_a
    assert "still running), made during test_holder.py::test_holds_things" in out_a
    assert not [n for n in os.listdir("/dev/shm") if tag in n]


def test_a_forgotten_note_is_not_read_back(tmp_path, monkeypatch):
    """``forget`` takes a note back (the name was found taken); a later note counts again."""
    from maglev.record import ENV, forget, note, read

    rec = tmp_path / "rec"
    monkeypatch.setenv(ENV, str(rec))
    note("shm", "maglev-x-1")
    note("netns", "ns-a")
    forget("shm", "maglev-x-1")
    forget("link", "never-noted")
    assert read(str(rec)) == [("netns", "ns-a")]
    note("shm", "maglev-x-1")
    note("netns", "ns-a")  # a repeat is listed once
    assert read(str(rec)) == [("netns", "ns-a"), ("shm", "maglev-x-1")]


def test_a_zombie_child_does_not_stall_the_guard() -> None:
    """A child that exited and was never reaped (a zombie) will never exec: the guard's wait
    for forked-not-yet-exec'd children must not spend its whole timeout on it (it did, 2 s
    per test, once a test left a defunct child of the pytest process: a suite run stalled)."""
    from maglev.testing import leaks

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the child is a zombie
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.01)
        t0 = time.monotonic()
        leaks._wait_for_exec(timeout_s=2.0)
        assert time.monotonic() - t0 < 1.0
    finally:
        os.waitpid(pid, 0)
