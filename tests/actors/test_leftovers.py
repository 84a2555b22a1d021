"""Leftovers of a killed ``maglev run``: the next run removes the run folder and shared
memory of runs it can prove dead (pid + process start time), never a live run's."""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from maglev.actors.leftovers import OWNER_FILE, is_dead, read_owner, remove_dead_runs, write_owner

CLI = [sys.executable, "-c", "from maglev_cli.main import main; main()"]


@pytest.fixture
def dirs(tmp_path):
    base, shm = tmp_path / "run", tmp_path / "shm"
    base.mkdir()
    shm.mkdir()
    return base, shm


def _dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited (started and reaped here)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = psutil.Process(p.pid).create_time()
    finally:
        p.kill()
        p.wait()
    return p.pid, start


def _run_dir(base: Path, name: str, pid: int, start: float, region: str = "") -> Path:
    d = base / f"maglev-{name}"
    d.mkdir()
    (d / "supervisor.sock").write_text("")
    (d / OWNER_FILE).write_text(json.dumps({"pid": pid, "start_time": start, "instance": "t",
                                            "region": region}))
    return d


def test_a_live_runs_folder_and_region_are_kept(dirs):
    base, shm = dirs
    me = psutil.Process()
    d = _run_dir(base, "live-abc", os.getpid(), me.create_time(), region=f"live-{os.getpid()}-aaaaaa")
    region = shm / f"maglev-live-{os.getpid()}-aaaaaa"
    region.write_bytes(b"x")
    assert remove_dead_runs(str(base), str(shm)) == []
    assert d.exists() and region.exists()


def test_a_dead_runs_folder_and_region_are_removed_with_one_line_each(dirs, caplog):
    base, shm = dirs
    pid, start = _dead_pid()
    d = _run_dir(base, "dead-abc", pid, start, region=f"dead-{pid}-bbbbbb")
    region = shm / f"maglev-dead-{pid}-bbbbbb"
    region.write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="maglev.supervisor"):
        removed = remove_dead_runs(str(base), str(shm))
    assert removed == [str(d), f"dead-{pid}-bbbbbb"]
    assert not d.exists() and not region.exists()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["removed the run folder of a dead run", "removed the shared memory of a dead run"]


def test_a_reused_pid_does_not_keep_a_dead_run_alive(dirs):
    """The recorded pid is running, but it is another process (different start time)."""
    base, shm = dirs
    me = psutil.Process()
    d = _run_dir(base, "reused-abc", os.getpid(), me.create_time() - 3600.0)
    assert is_dead(os.getpid(), me.create_time() - 3600.0)
    assert not is_dead(os.getpid(), me.create_time())
    assert remove_dead_runs(str(base), str(shm)) == [str(d)]


def test_regions_without_an_owner_file_are_judged_by_the_pid_in_their_name(dirs):
    base, shm = dirs
    pid, _ = _dead_pid()
    dead = shm / f"maglev-orphan-{pid}-cccccc"
    live = shm / f"maglev-orphan-{os.getpid()}-dddddd"  # this process predates the file
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # A live process that predates the file (as its creator would): kept.
        time.sleep(0.05)
        theirs = shm / f"maglev-orphan-{other.pid}-eeeeee"
        theirs.write_bytes(b"x")
        assert psutil.Process(other.pid).create_time() < os.stat(theirs).st_ctime
        removed = remove_dead_runs(str(base), str(shm))
        assert removed == [f"orphan-{pid}-cccccc"]
        assert not dead.exists()
        assert live.exists() and theirs.exists()
    finally:
        other.kill()
        other.wait()
    # Once that process is gone, its region goes too.
    assert remove_dead_runs(str(base), str(shm)) == [f"orphan-{other.pid}-eeeeee"]
    assert live.exists()
    # Unknown names, foreign folders and folders without an owner file are never touched.
    (shm / "maglev-not-a-region").write_bytes(b"x")
    (base / "maglev-mg1-noowner").mkdir()
    (base / "other").mkdir()
    assert remove_dead_runs(str(base), str(shm)) == []
    assert (shm / "maglev-not-a-region").exists() and (base / "maglev-mg1-noowner").exists()


def test_owner_file_round_trip_and_bad_files(tmp_path):
    write_owner(tmp_path, "mg7", "mg7-1-abcdef")
    o = read_owner(tmp_path)
    assert o["pid"] == os.getpid() and o["instance"] == "mg7" and o["region"] == "mg7-1-abcdef"
    assert abs(o["start_time"] - psutil.Process().create_time()) < 0.05
    for bad in ("", "{", "[]", '{"pid": "1", "start_time": 1}', '{"pid": 1}'):
        (tmp_path / OWNER_FILE).write_text(bad)
        assert read_owner(tmp_path) is None


def test_the_next_maglev_run_removes_what_a_killed_one_left(tmp_path):
    """End to end: ``kill -9`` of ``maglev run`` leaves its run folder and region; the next
    ``maglev run`` removes both and says so on stderr; its own are gone at its end too."""
    from maglev.config import SAMPLE_CONFIG

    inst = f"lo{os.getpid()}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(SAMPLE_CONFIG.read_text().replace('name = "mg1"', f'name = "{inst}"', 1))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "MAGLEV_STATE_DIR": str(tmp_path)}
    first = subprocess.Popen([*CLI, "run", "--workers", "1", "--json", "--config", str(cfg),
                              "--control", f"ipc://{tmp_path}/c1.sock"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        me = psutil.Process(first.pid)
        deadline = time.monotonic() + 60
        while not (glob.glob(f"{tmp_path}/maglev-{inst}-*/{OWNER_FILE}")
                   and glob.glob(f"/dev/shm/maglev-{inst}-{first.pid}-*") and len(me.children()) >= 4):
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        children = me.children()
        run_dir = glob.glob(f"{tmp_path}/maglev-{inst}-*")[0]
        region = glob.glob(f"/dev/shm/maglev-{inst}-{first.pid}-*")[0]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        psutil.wait_procs(children, timeout=10)
        # Left behind.  (Only the run folder is certain to be still there: it is in this
        # test's private XDG_RUNTIME_DIR, while any other maglev run on this machine --
        # another test suite, say -- may already have removed the dead run's region.)
        assert os.path.isdir(run_dir)
        second = subprocess.run(
            [*CLI, "run", "--workers", "1", "--nic", "gen:packets=1000", "--json", "--config", str(cfg),
             "--control", f"ipc://{tmp_path}/c2.sock"],
            capture_output=True, text=True, timeout=90, env=env)
        assert second.returncode == 0, second.stderr
        assert not os.path.exists(run_dir) and not os.path.exists(region)
        assert f'removed the run folder of a dead run" path={run_dir}' in second.stderr
        assert not glob.glob(f"{tmp_path}/maglev-{inst}-*")  # the second run's own folder too
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for p in glob.glob(f"/dev/shm/maglev-{inst}-{first.pid}-*"):
            os.unlink(p)
