"""One real `maglev run` (generator traffic, 2 workers, control plane, --metrics on
127.0.0.1, traces to a local OTLP receiver) shared by the end-to-end tests of this folder.

Everything it creates -- the process group, the shared-memory region, the run and state
directories, the receiver -- is removed at the end, also when a test fails."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from maglev.config import SAMPLE_CONFIG
from maglev.testing import unique
from maglev.testing.otlp import OtlpReceiver
from maglev.testing.ports import free_port

SAMPLE_EVERY = 500
# The package's run must outlive every test of the package: the teardown stops it.  A
# finite generator ends the run at its end, so this is only the bound for an orphan (pytest
# killed).  It was 120 s: with a second copy of the suite and other sessions on the 2-CPU
# machine this package took longer, and test_sampling_rate_changes_at_run_time found the
# run gone ("no control socket") in both copies (2026-12-07).
RUN_SECONDS = 1800
MAGLEV = [sys.executable, "-c", "from maglev_cli.main import main; main()"]




class Running:
    def __init__(self, d: Path, name: str, port: int, rx: OtlpReceiver, proc: subprocess.Popen):
        self.dir, self.name, self.port, self.rx, self.proc = d, name, port, rx, proc
        self.sample_every = SAMPLE_EVERY
        self.control = f"ipc://{d}/run/{name}/control.sock"
        self.config = d / "maglev.toml"
        self.env = {**os.environ, **rx.env(), "MAGLEV_RUN_DIR": str(d / "run"),
                    "MAGLEV_STATE_DIR": str(d / "state")}

    def ctl(self, *args: str, otel: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if not otel:
            env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
            env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        return subprocess.run([*MAGLEV, "ctl", "--control", self.control, *args],
                              env=env, capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([*MAGLEV, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def _main_module_ok() -> bool:
    try:
        import maglev_cli.main  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="package")
def running():
    if not _main_module_ok():
        pytest.skip("maglev_cli is not installed (pip install -e .)")
    d = Path(tempfile.mkdtemp(prefix="mgo-", dir="/tmp"))
    name = unique.name("obs")
    port = free_port()
    cfg = SAMPLE_CONFIG.read_text().replace('name = "mg1"', f'name = "{name}"')
    cfg += f"\n[tracing]\npacket_sample_rate = {SAMPLE_EVERY}\n"
    (d / "maglev.toml").write_text(cfg)
    rx = OtlpReceiver().__enter__()
    proc = None
    err_file = open(d / "run.err", "wb")  # closed in finally
    try:
        r = Running(d, name, port, rx, None)  # type: ignore[arg-type]
        proc = subprocess.Popen(
            [*MAGLEV, "run", "--workers", "2",
             "--config", str(r.config), "--nic", f"gen:flows=200,ipv6=0,seconds={RUN_SECONDS}", "--json",
             "--metrics", f"127.0.0.1:{port}", "--control", r.control, "--otlp-endpoint", rx.endpoint],
            env=r.env, stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
        r.proc = proc
        deadline = time.monotonic() + 40
        while True:
            if proc.poll() is not None:
                err = (d / "run.err").read_text(errors="replace")
                pytest.fail(f"maglev run exited early ({proc.returncode}): {err[-2000:]}")
            if Path(r.control[len("ipc://"):]).exists() and r.ctl("status").returncode == 0:
                break
            assert time.monotonic() < deadline, "maglev run did not start in 40 s"
            time.sleep(0.3)
        yield r
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # our child: a clean stop of every actor
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()  # its actors notice the parent is gone and stop
                proc.wait(timeout=10)
        err_file.close()
        rx.__exit__(None, None, None)
        for shm in Path("/dev/shm").glob(f"maglev-{name}-*"):
            shm.unlink(missing_ok=True)
        shutil.rmtree(d, ignore_errors=True)
