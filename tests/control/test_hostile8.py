"""Session 8: the config manager under big and hostile changes (docs/operations.md,
"Hostile sweep, session 8").

Each test names the hole it closes; every one of them failed on the code before the fix.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from maglev.actors.supervisor import ActorDef, Supervisor
from maglev.control.client import ControlClient
from maglev.hashing import next_prime

CONFIG_ACTOR = "maglev.actors.testing_config:ThreadedConfigManager"
BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}:\n    pass\n"


def toml_config(name: str, vips: int = 1, backends: int = 4, size: int = 251) -> str:
    out = [f'[instance]\nname = "{name}"\nsource_ipv4 = "198.19.0.1"\n']
    for i in range(vips):
        out.append(f'[[vip]]\naddress = "203.0.113.{1 + i // 200}"\nport = {1000 + i % 200}\n'
                   f'protocol = "tcp"\ntable_size = {size}\n')
        for j in range(backends):
            out.append(f'[[vip.backend]]\naddress = "198.18.{j // 250}.{1 + j % 250}"\n')
    return "\n".join(out)


class CpuLoad:
    """Busy loops in child processes (bounded in time, killed by PID when done)."""

    def __init__(self, n: int = 2, seconds: float = 60.0):
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=seconds)]) for _ in range(n)]

    def __enter__(self) -> CpuLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


def wait_for(cond: Any, timeout: float, sup: Supervisor) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sup.poll(0.02)
        if cond():
            return
    raise AssertionError("condition not met in time")


def call_polling(sup: Supervisor, endpoint: str, op: str, args: dict[str, Any],
                 timeout: float = 60.0) -> tuple[dict[str, Any], float]:
    """Send one request from a thread while this thread runs the supervisor (as ``maglev
    run`` does); return (result or error, the longest the supervisor went without hearing
    from the config manager meanwhile)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with ControlClient(endpoint, timeout) as c:
                out["result"] = c.call(op, args, timeout=timeout)
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    child = sup.children["config"]
    worst = 0.0
    while t.is_alive():
        sup.poll(0.02)
        worst = max(worst, time.monotonic() - child.last_hb)
    t.join()
    return out, worst


@pytest.fixture
def config_run(shortdir: Path):
    """A supervisor running only the config manager (over ThreadedPublisher, one worker
    stalled so every publication waits out the confirm timeout)."""
    runs: list[Supervisor] = []

    def start(text: str, **params: Any) -> tuple[Supervisor, str]:
        path = shortdir / "maglev.toml"
        path.write_text(text)
        ctl = f"ipc://{shortdir}/ctl.sock"
        sup = Supervisor([ActorDef("config", CONFIG_ACTOR, {"config": str(path), "control": ctl,
                                                             "state": str(shortdir / "state.json"), **params})],
                         instance=f"s8g-{secrets.token_hex(3)}", heartbeat_timeout_s=3.0, startup_timeout_s=60.0)
        runs.append(sup)
        sup.use_standby = False
        sup.start()
        wait_for(lambda: sup.children["config"].hello or bool(sup.failed), 60, sup)
        assert not sup.failed, sup.failed
        return sup, ctl

    yield start
    for sup in runs:
        sup.close()


# -- heartbeats while a change works -------------------------------------------------------

def test_a_long_change_under_cpu_load_never_gets_the_config_manager_killed(config_run):
    """The config manager was killed for its heartbeats during a big change at load 14:
    only the table build ran on a helper thread; the publication after it (up to 2 s for
    the workers to leave the idle copy, then ``confirm_timeout`` for them to switch) ran on
    the actor thread without a heartbeat.  Here a worker never switches (confirm_timeout
    4 s, longer than the supervisor's 3 s) and the tables are big, under two busy loops:
    the change is answered, the actor is never killed, the supervisor hears from it."""
    size = next_prime(2_000_000)
    sup, ctl = config_run(toml_config("s8g-hb", size=size), stall=1, confirm_timeout=4.0)
    pid = sup.pid("config")
    with CpuLoad(2, 60):
        r, worst = call_polling(sup, ctl, "set-weight", {"vip": "203.0.113.1:1000/tcp",
                                                          "backend": "198.18.0.1", "weight": 3})
    assert "error" not in r, r
    res = r["result"]
    assert res["changed"] and res["confirmed"] is False and res["wait_ms"] >= 3900, res
    assert sup.pid("config") == pid and sup.children["config"].incarnation == 0, sup.events
    assert not [e for e in sup.events if "died" in e[2]], sup.events
    assert worst < sup.heartbeat_timeout_s, f"{worst:.2f} s without a heartbeat"


# -- tables that outgrow the run's tables area ----------------------------------------------

def _config(name: str, vips: int, size: int, backends: int = 3) -> Any:
    from maglev import config as cfg

    return cfg.loads(toml_config(name, vips=vips, size=size, backends=backends))


def test_tables_size_is_the_blob_size_for_every_kind_of_config():
    """``tables_size(config)`` (what a change needs, known before any work) is exactly the
    size of the blob ``build_tables`` makes: plain, QUIC, VIP matching, pools, many VIPs."""
    from maglev import config as cfg
    from maglev.config import SAMPLE_CONFIG
    from maglev.datapath.tables import build_tables, tables_size
    from tests.control.test_run_pools import CONF as POOLS_TOML
    from tests.datapath.cluster_helpers import a_config
    from tests.datapath.test_quic import CONF as QUIC_CONF

    configs = [cfg.load(SAMPLE_CONFIG), QUIC_CONF, a_config(), _config("s8g-sz", 300, 251, 7),
               _config("s8g-sz", 1, 65537, 0)]
    configs.append(cfg.loads(POOLS_TOML.format(name="s8g-pools", port=9)))
    for c in configs:
        down = frozenset((v.key, b.key) for v in c.vips for b in v.backends[:1])
        for d in (frozenset(), down):
            assert tables_size(c) == len(build_tables(c, down=d)), c.instance.name


def test_a_change_beyond_the_tables_area_is_refused_before_any_work(tmp_path):
    """A reload that grew the tables past the run's tables area built them, wrote the state
    file, failed to publish (``publish-failed``) and wrote the old state back: a crash
    in between kept a config the run cannot publish.  Now it is ``needs-restart`` with
    both sizes in the message before anything is built, written or published, and the
    same for ``apply --dry-run``, adding VIPs or backends."""
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request
    from maglev.control.publisher import RegionPublisher
    from maglev.control.tables import blob_size, build_tables
    from tests.region_helpers import scratch_region

    small = _config("s8g-room", 1, 251, backends=4)
    room = 2 * len(build_tables(small))
    src = tmp_path / "maglev.toml"
    src.write_text(toml_config("s8g-room", vips=1, size=251))
    state = tmp_path / "state.json"
    with scratch_region("s8g-room", 1, 64, 64, tables_bytes=room) as region:
        mgr = ConfigManager.open(RegionPublisher(region, lambda: []), source_path=src, state_path=state)
        gen, before = mgr.generation, state.read_bytes()
        builds: list[int] = []
        inner = mgr.build_tables
        mgr.build_tables = lambda config, down=frozenset(): builds.append(1) or inner(config, down=down)

        src.write_text(toml_config("s8g-room", vips=3, size=4099))  # a reload 3 VIPs, 16x the slots
        big = _config("s8g-room", 3, 4099, backends=4)
        asks = [Request("reload", {}, 1), Request("preview-config", {"config": big.to_dict()}, 2),
                Request("add-vip", {"vip": {"address": "203.0.113.99", "port": 80, "protocol": "tcp",
                                            "table_size": 65537, "backend": [{"address": "198.18.0.9"}]}}, 3)]
        for req in asks:
            r = mgr.handle(req)
            assert not r.ok and r.error["code"] == "needs-restart", (req.op, r.error)
            msg = r.error["message"]
            assert str(room) in msg and "nothing changed" in msg and "Restart maglev run" in msg, msg
        assert str(blob_size(big)) in mgr.handle(asks[0]).error["message"]
        assert not builds and mgr.generation == gen == region.tables.generation()
        assert state.read_bytes() == before and mgr.config == small
        assert mgr.counters.publish_failures == 0
        # within the area: applied as before
        src.write_text(toml_config("s8g-room", vips=1, size=251, backends=5))
        r = mgr.handle(Request("reload", {}, 4))
        assert r.ok and r.result["changed"], r.error
        assert region.tables.generation() == gen + 1


def test_the_run_sizes_its_tables_area_for_the_accepted_config_too(tmp_path):
    """"Restart maglev run to apply it" must work when the big config came by ``ctl``: the
    state file (resumed while the source file is unchanged) counts when the area is sized."""
    from maglev.control import persist
    from maglev.control.tables import TABLES_AREA_MIN, blob_size, tables_area

    big = _config("s8g-area", 40, 1_000_003)
    state = tmp_path / "state.json"
    assert tables_area(1000, str(state)) == TABLES_AREA_MIN  # no state file yet
    persist.save_state(state, big, "")
    assert tables_area(1000, str(state)) == 2 * blob_size(big) > TABLES_AREA_MIN
    state.write_text("{not json")
    assert tables_area(1000, str(state)) == TABLES_AREA_MIN


# -- a full or read-only disk under the state ------------------------------------------------

DISK_SCRIPT = r'''
import json, os, subprocess, sys
from pathlib import Path
from maglev import config as cfg
from maglev.control.manager import ConfigManager
from maglev.control.protocol import Request
from maglev.control.publisher import ThreadedPublisher
from maglev.errors import MaglevError

base = Path(sys.argv[1])
small, full = base / "small", base / "plenty"
small.mkdir(); full.mkdir()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(small)], check=True)
src = full / "maglev.toml"
src.write_text(sys.argv[2])
out = {}

def fill(d):
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)

def case(name, state, run_dir):
    pub = ThreadedPublisher(2)
    try:
        mgr = ConfigManager.open(pub, source_path=src, state_path=state, run_dir=run_dir)
        files = [p for p in (state, run_dir and run_dir / "config.json") if p]
        before = [p.read_bytes() for p in files]
        blob0 = pub.blob
        fill(small)
        r = mgr.handle(Request("add-backend", {"vip": "203.0.113.1:1000/tcp", "backend": {"address": "198.18.5.5"}}, 1))
        out[name] = {"ok": r.ok, "error": r.error, "same_files": [p.read_bytes() == b for p, b in zip(files, before)],
                     "tables_back": pub.blob == blob0, "backends": len(mgr.config.vips[0].backends),
                     "leftovers": sorted(n for d in {p.parent for p in files} for n in os.listdir(d) if ".tmp-" in n)}
    finally:
        pub.close()
        (small / "filler").unlink(missing_ok=True)

# 1. the state folder is full
case("state_full", small / "state.json", None)
(small / "state.json").unlink()
# 2. the state folder has room, the run folder (second file) is full
case("run_full", full / "state.json", small)
for n in os.listdir(small):
    os.unlink(small / n)
# 3. a read-only state folder: a fresh start is one clear error; a restart in a run goes on
subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
try:
    ConfigManager.open(ThreadedPublisher(1), source_path=src, state_path=small / "state.json")
    out["ro_start"] = "started"
except MaglevError as exc:
    out["ro_start"] = f"{type(exc).__name__}: {exc}"
run = full / "run"
run.mkdir()
(run / "config.json").write_bytes((full / "state.json").read_bytes())
pub = ThreadedPublisher(1)
try:
    m = ConfigManager.open(pub, source_path=src, state_path=small / "state.json", run_dir=run, restart=True)
    out["ro_restart"] = {"generation": m.generation, "backends": len(m.config.vips[0].backends)}
finally:
    pub.close()
print(json.dumps(out))
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts a 64 KiB tmpfs in a private mount namespace")
def test_a_full_or_read_only_disk_under_the_state_changes_nothing(shortdir):
    """A full disk under the *second* file persisted (the run's config) left the state file
    renamed to the new config while the reply said ``persist-failed`` and the tables went
    back: a restart of ``maglev run`` then resumed a change the operator was told did not
    happen.  Both files are now written all-or-nothing.  A read-only state folder at a
    restart inside a run (after a kill -9) made the config manager's start fail, and the
    supervisor gave the whole run up; now it goes on with the run's accepted config (a
    fresh start is refused in one line).  The disk is a 64 KiB tmpfs in a private mount
    namespace, gone with the child process."""
    import json

    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", DISK_SCRIPT,
                        str(shortdir), toml_config("s8g-disk", backends=2)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for case in ("state_full", "run_full"):
        c = out[case]
        assert not c["ok"] and c["error"]["code"] == "persist-failed", (case, c)
        assert all(c["same_files"]) and c["tables_back"] and c["backends"] == 2, (case, c)
        assert c["leftovers"] == [], (case, c)
    assert out["ro_start"].startswith("ControlError: cannot write the state file") and "Read-only" in out["ro_start"], out
    assert out["ro_restart"]["backends"] == 2 and out["ro_restart"]["generation"] > 0, out
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_state_and_no_leftover(tmp_path):
    """kill -9 of a process in the middle of persisting a (2 MB) state: the file is always
    the old or the new one, whole; the temporary file the dead writer left behind (named
    after its pid, so never overwritten by the next writer) is removed by the next write."""
    from maglev.control import persist

    state = tmp_path / "state.json"
    old = persist.encode_state({"n": 0, "pad": "o" * 2_000_000})
    persist.atomic_write(state, old)
    writer = ("import sys\nfrom maglev.control import persist\ni = 1\n"
              "while True:\n    persist.atomic_write(sys.argv[1], persist.encode_state({'n': i, 'pad': 'n' * 2_000_000}))\n"
              "    i += 1\n")
    seen = set()
    for delay in (0.3, 0.45, 0.6, 0.8):
        p = subprocess.Popen([sys.executable, "-c", writer, str(state)], env={**os.environ, "PYTHONPATH": os.getcwd()})
        try:
            time.sleep(delay)
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        import json

        doc = json.loads(state.read_bytes())  # whole, never torn
        assert doc["config"]["pad"] in ("o" * 2_000_000, "n" * 2_000_000)
        seen.add(doc["config"]["n"])
        persist.atomic_write(state, old)
        assert [n for n in os.listdir(tmp_path) if ".tmp-" in n] == []
    # a leftover of a dead pid is removed; one of a live process (this one's parent) is not
    dead = tmp_path / ".state.json.tmp-999999999"
    live = tmp_path / f".state.json.tmp-{os.getppid()}"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    persist.atomic_write(state, old)
    assert not dead.exists() and live.exists()
