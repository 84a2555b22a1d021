"""The real forwarder in the namespace lab (``maglev run --nic afpacket:eth0`` in the lab's
maglev namespace, the lab's config edited by the test), shared by the lab tests that start
it themselves."""

from __future__ import annotations

import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maglev.config import Config, dump_toml
from maglev.lab.topology import Lab


def register(*actors: str) -> str:
    """``python -c`` code that runs the CLI with the extra actors ``actors`` registered."""
    names = ", ".join(repr(a) for a in actors)
    return f"from maglev.actors import extra; extra.register({names}); from maglev_cli.main import main; main()"


def lab_config(lab: Lab) -> dict[str, Any]:
    """The config the lab wrote for its forwarder, as a dict the test may edit."""
    return tomllib.loads(Path(lab.state["config"]).read_text())


def write_config(path: Path, data: dict[str, Any]) -> Config:
    """Validate ``data`` and write it to ``path`` as TOML; return the Config."""
    conf = Config.from_dict(data)
    path.write_text(dump_toml(conf))
    return conf


def spawn_run(lab: Lab, workdir: Path, workers: int, actors: tuple[str, ...] = ("config",)) -> str:
    """Start ``maglev run --config WORKDIR/maglev.toml --nic afpacket:eth0`` (process
    ``maglev`` of the lab, in its maglev namespace) with ``actors`` registered and its run
    and state directories in ``workdir`` (short: ipc:// paths); return its control
    endpoint.  The lab stops it when it goes down."""
    cfg = workdir / "maglev.toml"
    name = tomllib.loads(cfg.read_text())["instance"]["name"]
    env = {"MAGLEV_RUN_DIR": str(workdir / "run"), "MAGLEV_STATE_DIR": str(workdir / "state")}
    lab.spawn("maglev", lab.state["maglev"]["ns"],
              [sys.executable, "-c", register(*actors), "run", "--config", str(cfg), "--nic", "afpacket:eth0",
               "--workers", str(workers)], env=env)
    return f"ipc://{workdir}/run/{name}/control.sock"


def backend_rows(client: Any, vip: str) -> dict[str, dict[str, Any]]:
    """The ``backends`` reply for ``vip`` by backend name (``client``: a ControlClient)."""
    return {r["backend"]: r for r in client.call("backends", {"vip": vip})["backends"]}


def wait_all_up(lab: Lab, ep: str, vip: str, what: str, timeout: float = 40.0,
                check: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Poll the forwarder at ``ep`` until every backend of ``vip`` is up and return the
    rows; ``check`` judges every reply on the way.  Fails when a lab process died or after
    ``timeout`` seconds (``what`` says which wait)."""
    from maglev.control.client import ControlClient

    deadline = time.monotonic() + timeout
    rows = None
    while True:
        lab._check_processes()
        try:
            with ControlClient(ep, timeout=1) as c:
                rows = backend_rows(c, vip)
        except (TimeoutError, OSError):  # not listening yet
            pass
        else:
            if check is not None:
                check(rows)
            if all(r["health"] == "up" for r in rows.values()):
                return rows
        assert time.monotonic() < deadline, f"{what}: {rows}"
        time.sleep(0.05)
