"""The leak guard of tests/conftest.py (maglev/testing/leaks.py) on a test session of its
own: it reports what a test leaves (a shm region, a namespace, a process, a run folder) as
an error naming the test that made it, removes it, drops the connection tables a stopped
run kept for adoption, and lets a clean test pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def _session(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    (tmp_path / "test_leaky.py").write_text(body)
    tag = f"lkg{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGLEV_")}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", LEAK_TAG=tag)
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                        "-W", "ignore::pytest.PytestAssertRewriteWarning", str(tmp_path / "test_leaky.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
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
