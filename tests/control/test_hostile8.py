"""Session 8: the config manager under big and hostile changes (docs/operations.md,
"Hostile sweep, session 8").

Each test names the hole it closes; every one of them failed on the code before the fix.
"""

from __future__ import annotations

import os
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
from maglev.testing import unique

CONFIG_ACTOR = "maglev.testing.config_actor:ThreadedConfigManager"
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
                         instance=unique.name("cm"), heartbeat_timeout_s=3.0, startup_timeout_s=60.0)
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


# -- a change while a worker is being restarted -----------------------------------------------

def test_a_change_while_a_hung_worker_is_being_replaced_waits_only_for_live_workers(tmp_path):
    """Worker 1 hangs on an old generation (the idle copy): the change must wait for it --
    until the supervisor declares it dead (``actor_down``, 0.3 s in).  The publisher read
    the set of live workers once per wait, so the change waited out the whole 2 s and
    failed ``publish-failed``; now it goes on as soon as the worker is out of the set."""
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request
    from maglev.control.publisher import RegionPublisher
    from maglev.control.tables import build_tables
    from tests.region_helpers import scratch_region

    src = tmp_path / "maglev.toml"
    src.write_text(toml_config("s8g-live", size=251))
    live = [0, 1]
    with scratch_region("s8g-live", 2, 64, 64, tables_bytes=1 << 20) as region:
        mgr = ConfigManager.open(RegionPublisher(region, lambda: list(live)), source_path=src,
                                 state_path=tmp_path / "state.json")
        region.tables.acquire(0)
        region.tables.acquire(1)  # worker 1 now holds the first generation ...
        mgr.handle(Request("set-weight", {"vip": "203.0.113.1:1000/tcp", "backend": "198.18.0.1", "weight": 2}, 1))
        stop = threading.Event()

        def worker0() -> None:  # ... while worker 0 keeps taking the new ones
            while not stop.is_set():
                region.tables.acquire(0)
                time.sleep(0.005)

        w = threading.Thread(target=worker0, daemon=True)
        w.start()
        t = threading.Timer(0.3, lambda: live.remove(1))  # the supervisor: worker-1 is down
        t.start()
        try:
            t0 = time.monotonic()
            r = mgr.handle(Request("set-weight", {"vip": "203.0.113.1:1000/tcp", "backend": "198.18.0.1",
                                                  "weight": 3}, 2))
            took = time.monotonic() - t0
        finally:
            t.cancel()
            stop.set()
            w.join(5)
        assert r.ok and r.result["changed"] and r.result["confirmed"], r.error
        assert took < 1.9, f"{took:.2f} s: waited for a worker declared dead"
        assert region.tables.current()[1] == mgr._blob == build_tables(mgr.config)


def test_the_actor_keeps_the_live_set_and_defers_the_rest_while_a_request_runs(tmp_path):
    """While a request runs on the helper thread, the actor thread handles ``actor_down`` /
    ``actor_up`` (the set is replaced, never changed in place) and keeps every other
    mailbox message, and the helper thread's own sends, for after the request."""
    from maglev.actors.base import ActorSpec
    from maglev.actors.config_manager import ConfigManagerActor

    a = ConfigManagerActor(ActorSpec("config", "maglev.actors.config_manager:ConfigManagerActor", str(tmp_path)))
    a.live = {0, 1, 2}
    sent: list[tuple[str, threading.Thread]] = []
    handled: list[str] = []
    a.mailbox = None
    from maglev.actors.base import Actor

    def base_send(self: Any, type_: str, **body: Any) -> None:
        sent.append((type_, threading.current_thread()))

    def controller(msg: dict[str, Any]) -> bool:
        if not msg["type"].startswith("controller."):
            return False
        handled.append(msg["type"])
        return True

    a._controller_message = controller  # type: ignore[method-assign]
    seen: list[frozenset[int]] = []

    def request() -> str:
        before = a.live
        a.handle({"type": "actor_down", "actor": "worker-1"})  # as the actor thread would, meanwhile
        a.handle({"type": "controller.query", "state": {}})
        seen.append(frozenset(before))
        a.send("controller.drain", drained=True)
        assert not sent and handled == []  # kept for after the request
        return "done"

    orig = Actor.send
    Actor.send = base_send  # type: ignore[method-assign]
    try:
        assert a._beating(request) == "done"
    finally:
        Actor.send = orig  # type: ignore[method-assign]
    assert a.live == {0, 2} and seen == [frozenset({0, 1, 2})]
    assert handled == ["controller.query"]
    assert [s for s, th in sent if s != "hb"] == ["controller.drain"] and all(th is threading.main_thread() for _, th in sent)


# -- many clients at once, an oversized request, a SIGHUP storm --------------------------------

def test_concurrent_clients_lose_no_update_and_see_generations_in_order(config_run):
    """12 clients each add their own backend at once (and read status meanwhile) through the
    actor: every change is applied (none lost to another's read-modify-write), each reply
    has its own generation, and the generations the clients saw are exactly the next 12."""
    sup, ctl = config_run(toml_config("s8g-many", backends=2), workers=2)
    out: dict[int, Any] = {}
    gen0 = _call(sup, ctl, "status", {})["generation"]

    def client(i: int) -> None:
        try:
            with ControlClient(ctl, 60) as c:
                r = c.call("add-backend", {"vip": "203.0.113.1:1000/tcp", "backend": {"address": f"198.18.9.{i + 1}"}})
                c.call("status", {})
                out[i] = r
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        sup.poll(0.02)
    assert all(isinstance(r, dict) and r["changed"] for r in out.values()) and len(out) == 12, out
    gens = sorted(r["generation"] for r in out.values())
    assert gens == list(range(gen0 + 1, gen0 + 13)), gens
    backends = _call(sup, ctl, "backends", {"vip": "203.0.113.1:1000/tcp"})["backends"]
    assert {f"198.18.9.{i + 1}" for i in range(12)} <= {b["address"] for b in backends}
    assert sup.children["config"].incarnation == 0


def _call(sup: Supervisor, ctl: str, op: str, args: dict[str, Any]) -> Any:
    r, _ = call_polling(sup, ctl, op, args, timeout=30)
    if "error" in r:
        raise r["error"]
    return r["result"]


def test_a_request_over_the_message_limit_is_a_clear_error_not_a_timeout(config_run):
    """A valid config of 65536 backends is 1.5 MB as a ``ctl apply`` request; the server
    drops a peer whose message passes 1 MiB, so the client waited out its timeout for "no
    reply".  It now refuses at once and says what to do; the server keeps serving."""
    from maglev.errors import ControlError

    sup, ctl = config_run(toml_config("s8g-big", backends=2))
    big = {"instance": {"name": "s8g-big", "source_ipv4": "198.19.0.1"},
           "vip": [{"address": "203.0.113.1", "port": 1000, "protocol": "tcp", "table_size": 65537,
                    "backend": [{"address": f"198.18.{j // 250}.{1 + j % 250}"} for j in range(60000)]}]}
    with ControlClient(ctl, 30) as c:
        t0 = time.monotonic()
        with pytest.raises(ControlError, match=r"replace-config: the request is \d+ bytes, over .*ctl reload") as exc:
            c.call("replace-config", {"config": big})
        assert time.monotonic() - t0 < 1.0 and "ControlTimeout" not in type(exc.value).__name__
    assert _call(sup, ctl, "status", {})["backends"] == 2


def test_a_sighup_storm_reloads_without_piling_up_or_restarting(config_run, shortdir):
    """300 SIGHUPs in a burst while the file changes under them: reloads never overlap
    (one at a time, the rest folded into the next), each is answered, the last one runs
    the file as it is at the end, the generation only grows and the actor is never
    restarted."""
    from types import SimpleNamespace

    from maglev.service.runloop import ServiceLoop

    sup, ctl = config_run(toml_config("s8g-hup", backends=2))
    loop = ServiceLoop(SimpleNamespace(supervisor=sup, region=None))
    old = signal.signal(signal.SIGHUP, lambda *_: loop.request_reload())
    path = shortdir / "maglev.toml"
    try:
        for i in range(300):
            if i % 50 == 0:
                # written whole, as an operator's editor or config tool does (temp + rename):
                # a reload reading a truncated-then-written file between the two steps saw an
                # empty one -- defaults, instance "mg1" -- and refused it, rightly (CI s9b)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(toml_config("s8g-hup", backends=2 + i // 50))
                os.replace(tmp, path)
            os.kill(os.getpid(), signal.SIGHUP)
            loop.tick()
            sup.poll(0)
        deadline = time.monotonic() + 60
        while (loop._reload_wanted or (loop._reload is not None and loop._reload.is_alive())) \
                and time.monotonic() < deadline:
            loop.tick()
            sup.poll(0.02)
    finally:
        signal.signal(signal.SIGHUP, old)
        loop.close()
    assert loop.reloads and all(r["ok"] for r in loop.reloads), loop.reloads
    assert len(loop.reloads) < 300
    gens = [r["result"]["generation"] for r in loop.reloads]
    assert gens == sorted(gens), gens
    assert _call(sup, ctl, "status", {})["backends"] == 7
    assert sup.children["config"].incarnation == 0


# -- kill -9 in the middle of a publication --------------------------------------------------

def _forked(fn: Any, *args: Any) -> int:
    """Run ``fn(*args)`` in a forked child (no thread runs in this test: fork is safe); the
    child leaves with os._exit, whatever happens."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        code = 0
        try:
            fn(*args)
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def test_kill_9_of_the_publisher_mid_publication_leaves_whole_tables():
    """The config manager's publisher killed at random points of publishing 4 MiB tables,
    while a worker process keeps taking them: the tables the workers see are always
    exactly one of the two published blobs (old or new, never a mix) and valid for the
    data path, and the next publisher (the restarted config manager) publishes over them."""
    from maglev import config as cfg
    from maglev.control.publisher import RegionPublisher
    from maglev.control.tables import build_tables
    from maglev.datapath.tables import read_tables
    from maglev.telemetry.spans import store_generation_context  # noqa: F401 (imported before the forks)
    from tests.region_helpers import scratch_region

    texts = [toml_config("s8g-kill", backends=b, size=next_prime(500_000)) for b in (3, 4)]
    blobs = [build_tables(cfg.loads(t)) for t in texts]
    with scratch_region("s8g-kill", 1, 64, 64, tables_bytes=2 * len(blobs[1])) as region:
        region.tables.publish(blobs[0], [], 1.0)

        def worker() -> None:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                region.tables.acquire(0)
                time.sleep(0.001)

        def publisher() -> None:
            pub = RegionPublisher(region, lambda: [0])
            end = time.monotonic() + 60
            i = 1
            while time.monotonic() < end:
                pub.publish(blobs[i % 2])
                i += 1

        w = _forked(worker)
        try:
            gens = [region.tables.generation()]
            for delay in (0.01, 0.05, 0.11, 0.2, 0.33):
                p = _forked(publisher)
                try:
                    time.sleep(delay)
                finally:
                    _kill(p)
                gen, blob = region.tables.current()
                assert blob in blobs, f"generation {gen}: {len(blob)} bytes, neither blob"
                read_tables(blob)
                gens.append(gen)
            assert gens[-1] > gens[0] + 3, gens  # the children did publish
            # the restarted config manager publishes over whatever the killed one left
            pub = RegionPublisher(region, lambda: [0])
            g = pub.publish(blobs[0])
            assert pub.wait_all_seen(g, 5.0) and region.tables.current() == (g, blobs[0])
        finally:
            _kill(w)


# -- huge configs ---------------------------------------------------------------------------

@pytest.mark.parametrize("vips, backends, needle", [
    (10_000, 1, "vip: 10000 VIPs; the data path holds at most 4096"),
    (1, 100_000, "vip[0].backend: 100000 backends; the data path holds at most 65536"),
    (400, 250, "vip: 100000 (VIP, backend) pairs; the data path holds at most 65536"),
])
def test_a_huge_config_is_refused_quickly_in_one_line(vips, backends, needle, publisher):
    """10k VIPs, 100k backends: ``invalid-config`` in bounded time with one problem line
    (not one per backend), nothing built or published."""
    from maglev.config import Config
    from maglev.control.manager import ConfigManager
    from maglev.control.protocol import Request

    def vip(i: int, n: int) -> dict[str, Any]:
        return {"address": f"203.0.{113 if i < 250 else 112}.{1 + i % 250}", "port": 1000 + i // 250,
                "protocol": "tcp", "table_size": 251,
                "backend": [{"address": f"198.18.{(j // 250) % 250}.{1 + j % 250}"} for j in range(n)]}

    inst = {"name": "s8g-huge", "source_ipv4": "198.19.0.1"}
    mgr = ConfigManager(Config.from_dict({"instance": inst, "vip": [vip(0, 2)]}), publisher)
    mgr._publish_initial()
    gen = mgr.generation
    t0 = time.monotonic()
    r = mgr.handle(Request("replace-config", {"config": {"instance": inst, "vip": [vip(i, backends) for i in range(vips)]}}, 1))
    took = time.monotonic() - t0
    assert not r.ok and r.error["code"] == "invalid-config" and r.error["message"] == needle, r.error
    assert took < 30, f"{took:.1f} s to refuse"
    assert mgr.generation == gen and len(publisher.history) == 1
